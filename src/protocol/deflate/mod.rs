//! permessage-deflate (RFC 7692), sans-IO: the negotiation, and the per-worker compressor and
//! inflater that let one compressed frame serve every subscriber.

mod negotiate;

pub use negotiate::{negotiate, Agreed, EXTENSION, MAX_WINDOW_BITS, MIN_SERVER_WINDOW_BITS};
