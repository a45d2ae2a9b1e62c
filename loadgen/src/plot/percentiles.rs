//! The latency-by-percentile curve, as HdrHistogram's plotter draws it: the x axis is `1/(1-p)`
//! on a log scale, labelled in percentiles (90%, 99%, 99.9%, ...), so each "nine" gets the same
//! width and the tail is as visible as the median.

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Percentile steps per halving of the distance to 100%.
const TICKS_PER_HALF_DISTANCE: u32 = 5;
const WIDTH: u32 = 900;
const HEIGHT: u32 = 540;

/// Draws `histogram` (values in µs) to an SVG document titled `title`.
///
/// # Errors
///
/// A drawing error from `plotters`, as text.
pub fn latency_svg(histogram: &Histogram<u64>, title: &str) -> Result<String, String> {
    let points = curve(histogram);
    let max_x = points.last().map_or(10.0, |p| p.0).max(10.0) * 1.5;
    let max_y = points.iter().map(|p| p.1).fold(0.0f64, f64::max).max(0.001) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((1.0..max_x).log_scale(), 0.0..max_y)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| percentile_label(*x))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(points, &BLUE))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
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
    let p = 100.0 * (1.0 - 1.0 / x.max(1.0));
    let text = format!("{p:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
