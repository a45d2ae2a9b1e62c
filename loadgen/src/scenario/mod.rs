//! Load scenarios. Each one is bounded in count and time and stops by itself.

pub mod broadcast;
pub mod connect;
pub mod echo;
pub mod stamp;
pub mod traffic;
