//! Load scenarios. Each one is bounded in count and time and stops by itself.

pub mod connect;
