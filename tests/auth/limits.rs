//! Caps per address, connection and server.
