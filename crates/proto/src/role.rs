//! Which end of a WebSocket we are. Masking (RFC 6455 §5.3), the close
//! rules and permessage-deflate's parameters all depend on it.

/// Which end of the connection we are. Clients mask, servers must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// The end that opened the connection: masks every frame it sends.
    Client,
    /// The end that accepted it: never masks, and fails the connection on
    /// an unmasked frame from the client.
    Server,
}
