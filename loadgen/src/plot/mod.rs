//! SVG charts: the latency-by-percentile curve ([`percentiles`]).

mod percentiles;

pub use self::percentiles::latency_svg;
