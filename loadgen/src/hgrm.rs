//! `--hdr FILE`: a latency histogram as HdrHistogram's percentile distribution text (`.hgrm`),
//! the format of Java's `AbstractHistogram.outputPercentileDistribution` that wrk2 prints and
//! HdrHistogram's online plotter reads: values in milliseconds, quantiles in steps that halve
//! the distance to 100% (five per half), then the mean, standard deviation, max and count.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Percentile steps per halving of the distance to 100%, as HdrHistogram's own tools use.
const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Histogram values are µs; `.hgrm` files conventionally hold milliseconds.
const MICROS_PER_UNIT: f64 = 1000.0;

/// The percentile distribution of `histogram` (values in µs) as `.hgrm` text.
pub fn percentile_distribution(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !histogram.is_empty() {
        for step in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += step.count_since_last_iteration();
            let value =
                histogram.highest_equivalent(step.value_iterated_to()) as f64 / MICROS_PER_UNIT;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {quantile:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - quantile)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {quantile:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev, max) = if histogram.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            histogram.mean() / MICROS_PER_UNIT,
            histogram.stdev() / MICROS_PER_UNIT,
            histogram.highest_equivalent(histogram.max()) as f64 / MICROS_PER_UNIT,
        )
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        sub_buckets(histogram.sigfig())
    );
    out
}

/// HdrHistogram's sub-bucket count for a precision: the power of two that holds
/// `2 * 10^sigfig` distinct values.
fn sub_buckets(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_classic_layout() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let text = percentile_distribution(&h);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines.next().unwrap(), "");
        let first: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(first[0], "1.000");
        assert_eq!(first[1], "0.000000000000");
        assert_eq!(first[3], "1.00");
        let rows: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let last: Vec<&str> = rows.last().unwrap().split_whitespace().collect();
        assert_eq!(last.len(), 3, "the 100% row has no 1/(1-p)");
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "1000");
        assert!(text.contains("#[Mean    =      500."), "{text}");
        assert!(text.contains(", StdDeviation   =      288."), "{text}");
        assert!(text.contains("Total count    =         1000]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
        // Empty histograms still give a valid file.
        let empty = percentile_distribution(&Histogram::<u64>::new(3).unwrap());
        assert!(empty.contains("Total count    =            0]"));
    }
}
