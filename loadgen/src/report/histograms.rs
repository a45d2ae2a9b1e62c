//! The report's lossless latency histograms (`histograms` in the JSON): each one in
//! HdrHistogram's V2 compressed encoding (deflate), base64, as Java's
//! `encodeIntoCompressedByteBuffer` and HdrHistogram's interval logs write it. Percentiles cannot
//! be added; these can, count by count, which is what `uringcast-load merge` does.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde_json::{Map, Value};

/// The `histograms.format` value: what every other key of `histograms` holds.
pub const FORMAT: &str = "hdrhistogram-v2-deflate-base64";

/// The `histograms` object: `format`, then each named histogram encoded.
pub fn json(named: &[(&str, &Histogram<u64>)]) -> Value {
    let mut map = Map::new();
    map.insert("format".into(), FORMAT.into());
    for (name, histogram) in named {
        map.insert((*name).to_owned(), encode(histogram).into());
    }
    Value::Object(map)
}

/// One histogram in [`FORMAT`].
pub fn encode(histogram: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(histogram, &mut bytes)
        .expect("a histogram serialises into memory");
    STANDARD.encode(bytes)
}

/// A histogram from [`FORMAT`] text.
///
/// # Errors
///
/// Text that is not base64, or bytes that are not a V2 compressed histogram, as a message.
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| format!("not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("not an HdrHistogram V2 compressed histogram: {e}"))
}

/// The histogram `name` of a report's `histograms` object.
///
/// # Errors
///
/// A report without `histograms` (written before they existed), of another format, without
/// `name`, or with a value [`decode`] refuses, as a message naming the key.
pub fn read(report: &Value, name: &str) -> Result<Histogram<u64>, String> {
    let histograms = &report["histograms"];
    if histograms.is_null() {
        return Err(
            "no `histograms` (a report from before they were written: rerun it to merge it)".into(),
        );
    }
    if histograms["format"] != FORMAT {
        return Err(format!(
            "histograms.format is {}, not {FORMAT:?}",
            histograms["format"]
        ));
    }
    let text = histograms[name]
        .as_str()
        .ok_or_else(|| format!("no histograms.{name}"))?;
    decode(text).map_err(|e| format!("histograms.{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::traffic::new_histogram;

    #[test]
    fn encoding_is_lossless() {
        let mut h = new_histogram();
        for v in [1, 2, 3, 1000, 65_432, 3_000_000_000] {
            h.record(v).unwrap();
        }
        h.record_n(77, 5).unwrap();
        let back = decode(&encode(&h)).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.len(), 11);
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        let report = serde_json::json!({ "histograms": json(&[("latency_us", &h)]) });
        assert_eq!(read(&report, "latency_us").unwrap(), h);
        assert!(read(&report, "closing")
            .unwrap_err()
            .contains("histograms.closing"));
        assert!(read(&serde_json::json!({}), "latency_us")
            .unwrap_err()
            .contains("no `histograms`"));
        assert!(decode("bm90IGEgaGlzdG9ncmFt").is_err());
        // An empty histogram round-trips too.
        assert!(decode(&encode(&new_histogram())).unwrap().is_empty());
    }
}
