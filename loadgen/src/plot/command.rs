//! `uringcast-load plot`: comparison charts drawn from files, for a benchmark page.
//! `plot latency` draws one latency-by-percentile curve per `--json` report, from the lossless
//! histograms the report carries; `plot lines` draws named series from a `series,x,y` CSV.

use std::path::Path;

use hdrhistogram::Histogram;

use super::lines::{self, LineAxes};
use super::percentiles;
use crate::cli::{PlotArgs, PlotKind, PlotLatencyArgs, PlotLinesArgs};
use crate::error::{LoadError, EXIT_OK};
use crate::report::{self, histograms};

/// Runs `plot`: reads the inputs, draws the chart and writes it; the exit code, 0.
///
/// # Errors
///
/// [`LoadError::Usage`] for an output not named `*.svg`, a malformed or repeated
/// `NAME=REPORT.json`, a file that is not a
/// report or lacks the histogram asked for (or has no samples in it), bad CSV (naming the
/// line) or an x of 0 or below with `--log-x`; [`LoadError::Io`] for a file that cannot be
/// read, drawn or written.
pub fn run(args: &PlotArgs) -> Result<i32, LoadError> {
    let out = match &args.kind {
        PlotKind::Latency(latency) => &latency.out,
        PlotKind::Lines(lines) => &lines.out,
    };
    svg_name(out)?;
    let svg = match &args.kind {
        PlotKind::Latency(latency) => latency_chart(latency)?,
        PlotKind::Lines(lines) => lines_chart(lines)?,
    };
    std::fs::write(out, svg).map_err(|source| LoadError::Io {
        what: format!("cannot write {}", out.display()),
        source,
    })?;
    Ok(EXIT_OK)
}

fn latency_chart(args: &PlotLatencyArgs) -> Result<String, LoadError> {
    let mut curves: Vec<(&str, Histogram<u64>)> = Vec::with_capacity(args.curves.len());
    for curve in &args.curves {
        let (name, path) = name_and_path(curve)?;
        if curves.iter().any(|(seen, _)| *seen == name) {
            return Err(LoadError::Usage(format!(
                "{curve}: the name {name:?} is given twice; each curve needs its own"
            )));
        }
        let path = Path::new(path);
        let key = &args.histogram;
        let histogram = histograms::read(&report::read_json(path)?, key)
            .map_err(|e| LoadError::Usage(format!("{}: {e}", path.display())))?;
        if histogram.is_empty() {
            return Err(LoadError::Usage(format!(
                "{}: histograms.{key} has no samples: nothing to draw",
                path.display()
            )));
        }
        curves.push((name, histogram));
    }
    let named: Vec<(&str, &Histogram<u64>)> = curves.iter().map(|(n, h)| (*n, h)).collect();
    percentiles::latency_curves_svg(&named, &args.title).map_err(|e| cannot_draw(&args.out, e))
}

fn lines_chart(args: &PlotLinesArgs) -> Result<String, LoadError> {
    let text = std::fs::read_to_string(&args.csv).map_err(|source| LoadError::Io {
        what: format!("cannot read {}", args.csv.display()),
        source,
    })?;
    let series = lines::parse_csv(&text)
        .map_err(|e| LoadError::Usage(format!("{}: {e}", args.csv.display())))?;
    let axes = LineAxes {
        title: &args.title,
        x_label: &args.x_label,
        y_label: &args.y_label,
        log_x: args.log_x,
        y_from_zero: args.y_from_zero,
    };
    if args.log_x {
        if let Some(x) = lines::non_positive_x(&series) {
            return Err(LoadError::Usage(format!(
                "{}: --log-x needs every x above 0, and one is {x}",
                args.csv.display()
            )));
        }
    }
    lines::lines_svg(&series, axes).map_err(|e| cannot_draw(&args.out, e))
}

/// Refuses an output that does not end in `.svg`: with OUT.svg forgotten, the first
/// `NAME=REPORT.json` would be taken for it, and a report could be overwritten.
fn svg_name(out: &Path) -> Result<(), LoadError> {
    let is_svg = out
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("svg"));
    if is_svg {
        Ok(())
    } else {
        Err(LoadError::Usage(format!(
            "{}: the chart's file name must end in .svg (it comes first: plot KIND OUT.svg ...)",
            out.display()
        )))
    }
}

/// `NAME=PATH` split at its first `=`; both parts must be there.
fn name_and_path(curve: &str) -> Result<(&str, &str), LoadError> {
    match curve.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name, path)),
        _ => Err(LoadError::Usage(format!(
            "{curve:?} is not NAME=REPORT.json (a curve's legend name, =, a --json report)"
        ))),
    }
}

fn cannot_draw(out: &Path, error: String) -> LoadError {
    LoadError::Io {
        what: format!("cannot draw {}", out.display()),
        source: std::io::Error::other(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_curve_is_a_name_an_equals_sign_and_a_path() {
        assert_eq!(name_and_path("uWS=a.json").unwrap(), ("uWS", "a.json"));
        assert_eq!(name_and_path("a=b=c.json").unwrap(), ("a", "b=c.json"));
        for bad in ["a.json", "=a.json", "uWS=", ""] {
            let error = name_and_path(bad).unwrap_err();
            assert_eq!(error.exit_code(), crate::error::EXIT_USAGE, "{bad}");
            assert!(error.to_string().contains("NAME=REPORT.json"), "{error}");
        }
    }

    #[test]
    fn the_chart_is_an_svg_file() {
        assert!(svg_name(Path::new("out/echo.svg")).is_ok());
        assert!(svg_name(Path::new("ECHO.SVG")).is_ok());
        for bad in ["a=report.json", "report.json", "svg", ".svg"] {
            let error = svg_name(Path::new(bad)).unwrap_err();
            assert_eq!(error.exit_code(), crate::error::EXIT_USAGE, "{bad}");
        }
    }
}
