//! permessage-deflate (RFC 7692), sans-IO: the negotiation, and the per-worker compressor and
//! inflater that let one compressed frame serve every subscriber.

mod codec;
mod negotiate;

pub use codec::{Deflater, Inflater, DEFAULT_MIN_BYTES, RSV1};

pub use negotiate::{
    negotiate, parse_response, Agreed, CLIENT_OFFER, EXTENSION, MAX_WINDOW_BITS,
    MIN_SERVER_WINDOW_BITS, MIN_WINDOW_BITS,
};

#[cfg(test)]
mod wire_tests;
