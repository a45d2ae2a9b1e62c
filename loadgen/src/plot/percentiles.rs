//! The latency-by-percentile curve, as HdrHistogram's plotter draws it: the x axis is `1/(1-p)`
//! on a log scale, labelled in percentiles (90%, 99%, 99.9%, ...), so each "nine" gets the same
//! width and the tail is as visible as the median.

use hdrhistogram::Histogram;

use super::{Axis, Chart, Series};

/// Percentile steps per halving of the distance to 100%.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Draws `histogram` (values in µs) to an SVG document titled `title`: `--plot`'s one curve.
///
/// # Errors
///
/// A drawing error from `plotters`, as text.
pub fn latency_svg(histogram: &Histogram<u64>, title: &str) -> Result<String, String> {
    latency_curves_svg(&[("", histogram)], title)
}

/// Draws one curve per `(name, histogram)` (values in µs) on the same axes, with a legend of
/// the names (none when every name is empty), to an SVG document titled `title`.
///
/// # Errors
///
/// A drawing error from `plotters`, as text.
pub fn latency_curves_svg(
    curves: &[(&str, &Histogram<u64>)],
    title: &str,
) -> Result<String, String> {
    let series: Vec<Series> = curves
        .iter()
        .map(|(name, histogram)| Series {
            name: (*name).to_owned(),
            points: curve(histogram),
        })
        .collect();
    let points = || series.iter().flat_map(|one| one.points.iter());
    let max_x = points().map(|p| p.0).fold(10.0f64, f64::max) * 1.5;
    let max_y = points().map(|p| p.1).fold(0.0f64, f64::max).max(0.001) * 1.1;
    let chart = Chart {
        title,
        x_label: "percentile",
        y_label: "latency (ms)",
        x: Axis::Log(1.0..max_x),
        y: 0.0..max_y,
        x_ticks: Some(&|x| percentile_label(*x)),
        y_ticks: None,
        markers: false,
    };
    super::svg(&chart, &series)
}

/// `(1/(1-q), latency ms)` at each quantile step below 100%.
fn curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    histogram
        .iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|step| (step.quantile_iterated_to(), step.value_iterated_to()))
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, v)| {
            (
                1.0 / (1.0 - q),
                histogram.highest_equivalent(v) as f64 / 1000.0,
            )
        })
        .collect()
}

/// The percentile an x of `1/(1-p)` stands for: 10 → "90%", 1000 → "99.9%".
fn percentile_label(x: f64) -> String {
    format!("{}%", super::decimal(100.0 * (1.0 - 1.0 / x.max(1.0))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::colour;

    #[test]
    fn labels_read_as_percentiles() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(100_000.0), "99.999%");
    }

    #[test]
    fn curve_is_one_over_one_minus_q_against_milliseconds() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        // Pinned from the curve as `--plot` drew it before `plot latency` shared its code.
        let points = curve(&h);
        assert_eq!(points.len(), 68);
        assert_eq!(
            points[..4],
            [
                (1.0, 0.001),
                (1.0 / 0.9, 1.0),
                (1.25, 2.0),
                (1.0 / 0.7, 3.001)
            ]
        );
        assert_eq!(points[65], (8192.0, 9.999));
        assert_eq!(points[67].1, 10.007);
        assert!(curve(&Histogram::new(3).unwrap()).is_empty());
    }

    #[test]
    fn draws_an_svg() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let svg = latency_svg(&h, "test").unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("<polyline") || svg.contains("<path"));
        assert!(svg.contains("99%"), "percentile labels");
        // An empty run still draws axes.
        assert!(latency_svg(&Histogram::new(3).unwrap(), "empty").is_ok());
        // One curve and no name: no legend, so no legend sample beside the curve.
        let (r, g, b) = (colour(0).0, colour(0).1, colour(0).2);
        let stroke = format!("stroke=\"#{r:02X}{g:02X}{b:02X}\"");
        assert_eq!(svg.matches(&stroke).count(), 1);
    }

    #[test]
    fn two_curves_in_two_colours_with_a_legend() {
        let mut fast = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        let mut slow = fast.clone();
        for v in 1..=1000u64 {
            fast.record(v).unwrap();
            slow.record(v * 3).unwrap();
        }
        let svg = latency_curves_svg(&[("uringcast", &fast), ("other", &slow)], "echo").unwrap();
        for name in ["uringcast", "other"] {
            assert!(svg.lines().any(|line| line == name), "{name} in the legend");
        }
        // A curve and a legend sample per name, each in its own colour.
        for index in 0..2 {
            let (r, g, b) = (colour(index).0, colour(index).1, colour(index).2);
            let stroke = format!("stroke=\"#{r:02X}{g:02X}{b:02X}\"");
            let lines = svg
                .lines()
                .filter(|line| line.starts_with("<polyline") && line.contains(&stroke));
            assert_eq!(lines.count(), 2, "curve {index}");
        }
        assert!(svg.contains("99.9%"), "percentile labels");
    }
}
