//! placeholder: written by the handshake helper
