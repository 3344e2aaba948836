//! switchyard: async WebSocket client and server.
