//! switchyard-gateway.
