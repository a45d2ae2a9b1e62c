//! A line chart of named series read from CSV (`series,x,y`): one line with point markers per
//! series, such as a server's CPU µs per delivery against subscribers, or its RSS against
//! connections, one series per server.

use super::{Axis, Chart, Series};

/// The one header a data file may start with.
pub const HEADER: &str = "series,x,y";

/// Why a data file was refused; every message but [`CsvError::Empty`] names the line, from 1.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsvError {
    /// No header, or a header and no rows.
    #[error("line {line}: no rows (expected a `{HEADER}` header, then one row per point)")]
    Empty {
        /// The line after the last.
        line: usize,
    },
    /// The first line is not [`HEADER`].
    #[error("line 1: header is {found:?}, expected {HEADER:?}")]
    Header {
        /// The first line as read.
        found: String,
    },
    /// A row without exactly three fields.
    #[error("line {line}: {fields} field(s), expected 3 (series,x,y; no quoting)")]
    Fields {
        /// The line.
        line: usize,
        /// How many fields it has.
        fields: usize,
    },
    /// A row whose series name is empty.
    #[error("line {line}: empty series name")]
    NoName {
        /// The line.
        line: usize,
    },
    /// A value that is not a finite number.
    #[error("line {line}: {column} {value:?} is not a finite number")]
    Number {
        /// The line.
        line: usize,
        /// `x` or `y`.
        column: &'static str,
        /// The field as read.
        value: String,
    },
}

/// The series of a `series,x,y` document, in order of first appearance, each sorted by x.
/// Fields are trimmed; blank lines and a `\r` before each newline are ignored.
///
/// # Errors
///
/// [`CsvError`] for the first line that is wrong, or for a document with no rows.
pub fn parse_csv(text: &str) -> Result<Vec<Series>, CsvError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty());
    let Some((line, header)) = lines.next() else {
        return Err(CsvError::Empty { line: 1 });
    };
    let fields: Vec<&str> = header.split(',').map(str::trim).collect();
    if line != 1 || fields != ["series", "x", "y"] {
        return Err(CsvError::Header {
            found: header.to_owned(),
        });
    }
    let mut series: Vec<Series> = Vec::new();
    for (line, row) in lines {
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        let [name, x, y] = fields[..] else {
            return Err(CsvError::Fields {
                line,
                fields: fields.len(),
            });
        };
        if name.is_empty() {
            return Err(CsvError::NoName { line });
        }
        let point = (number(line, "x", x)?, number(line, "y", y)?);
        match series.iter_mut().find(|one| one.name == name) {
            Some(one) => one.points.push(point),
            None => series.push(Series {
                name: name.to_owned(),
                points: vec![point],
            }),
        }
    }
    if series.is_empty() {
        return Err(CsvError::Empty {
            line: text.lines().count() + 1,
        });
    }
    for one in &mut series {
        one.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(series)
}

/// How a line chart's axes are labelled and scaled.
#[derive(Clone, Copy, Debug, Default)]
pub struct LineAxes<'a> {
    /// The caption; none when empty.
    pub title: &'a str,
    /// The x axis's description.
    pub x_label: &'a str,
    /// The y axis's description.
    pub y_label: &'a str,
    /// A log x axis (every x must then be above 0).
    pub log_x: bool,
    /// The y axis includes 0, however far the values are from it.
    pub y_from_zero: bool,
}

/// Draws `series` (at least one point in all) as lines with markers to an SVG document.
///
/// # Errors
///
/// With `log_x`, an x of 0 or below; a drawing error from `plotters`; as text.
pub fn lines_svg(series: &[Series], axes: LineAxes<'_>) -> Result<String, String> {
    let points = || series.iter().flat_map(|one| one.points.iter());
    let (x_low, x_high) = bounds(points().map(|p| p.0));
    let (mut y_low, mut y_high) = bounds(points().map(|p| p.1));
    if axes.y_from_zero {
        y_low = y_low.min(0.0);
        y_high = y_high.max(0.0);
    }
    let x = if axes.log_x {
        if let Some(x) = non_positive_x(series) {
            return Err(format!("--log-x needs every x above 0, and one is {x}"));
        }
        Axis::Log(x_low / LOG_MARGIN..x_high * LOG_MARGIN)
    } else {
        Axis::Linear(padded(x_low, x_high, false))
    };
    let mut y = padded(y_low, y_high, axes.y_from_zero);
    // Room above the data for the legend (upper left), a row per series: no line runs under it.
    y.end += (y.end - y.start) * (LEGEND_ROW_SHARE * series.len() as f64 + LEGEND_PAD_SHARE);
    let chart = Chart {
        title: axes.title,
        x_label: axes.x_label,
        y_label: axes.y_label,
        x,
        y,
        x_ticks: Some(&|x| super::decimal(*x)),
        y_ticks: Some(&|y| super::decimal(*y)),
        markers: true,
    };
    super::svg(&chart, series)
}

/// An x of 0 or below, which a log axis cannot place, if `series` has one.
pub fn non_positive_x(series: &[Series]) -> Option<f64> {
    series
        .iter()
        .flat_map(|one| one.points.iter().map(|point| point.0))
        .find(|x| *x <= 0.0)
}

/// The legend's height per series, and its padding, as shares of the data's y span.
const LEGEND_ROW_SHARE: f64 = 0.06;
const LEGEND_PAD_SHARE: f64 = 0.04;

/// The factor a log axis reaches beyond the smallest and largest x, so no marker sits on an
/// edge.
const LOG_MARGIN: f64 = 1.2;
/// The share of a linear axis's span added at each end, for the same reason.
const LINEAR_MARGIN: f64 = 0.05;

/// A row's `column` value.
fn number(line: usize, column: &'static str, value: &str) -> Result<f64, CsvError> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| CsvError::Number {
            line,
            column,
            value: value.to_owned(),
        })
}

/// The smallest and largest of `values` (0, 1 when there are none).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values
        .fold(None, |range: Option<(f64, f64)>, v| {
            Some(range.map_or((v, v), |(low, high)| (low.min(v), high.max(v))))
        })
        .unwrap_or((0.0, 1.0))
}

/// `low..high` widened by [`LINEAR_MARGIN`] at each end, or by 1 when it is a single value;
/// a `low` of 0 stays 0 when `keep_zero`, so a y axis from zero starts at its origin.
fn padded(low: f64, high: f64, keep_zero: bool) -> std::ops::Range<f64> {
    let margin = if high > low {
        (high - low) * LINEAR_MARGIN
    } else {
        1.0
    };
    let start = if keep_zero && low == 0.0 {
        0.0
    } else {
        low - margin
    };
    let end = if keep_zero && high == 0.0 {
        0.0
    } else {
        high + margin
    };
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::colour;

    #[test]
    fn parses_series_in_order_of_first_appearance_sorted_by_x() {
        let text = "series,x,y\r\nuringcast, 1000, 2.5\nuWS,10,3\n\nuringcast,10,4\nuWS,1e3,1.5\n";
        let series = parse_csv(text).unwrap();
        assert_eq!(
            series,
            [
                Series {
                    name: "uringcast".into(),
                    points: vec![(10.0, 4.0), (1000.0, 2.5)],
                },
                Series {
                    name: "uWS".into(),
                    points: vec![(10.0, 3.0), (1000.0, 1.5)],
                },
            ]
        );
    }

    #[test]
    fn refuses_bad_input_naming_the_line() {
        let error = |text: &str| parse_csv(text).unwrap_err();
        assert_eq!(error(""), CsvError::Empty { line: 1 });
        assert_eq!(error("series,x,y\n\n"), CsvError::Empty { line: 3 });
        assert_eq!(
            error("name,x,y\na,1,2\n"),
            CsvError::Header {
                found: "name,x,y".into()
            }
        );
        // A header after a blank first line is not where it must be.
        assert!(matches!(
            error("\nseries,x,y\na,1,2"),
            CsvError::Header { .. }
        ));
        assert_eq!(
            error("series,x,y\na,1,2\nb,1\n"),
            CsvError::Fields { line: 3, fields: 2 }
        );
        assert_eq!(
            error("series,x,y\n\"a,b\",1,2\n"),
            CsvError::Fields { line: 2, fields: 4 }
        );
        assert_eq!(error("series,x,y\n ,1,2\n"), CsvError::NoName { line: 2 });
        assert_eq!(
            error("series,x,y\na,1,2\na,2,fast\n"),
            CsvError::Number {
                line: 3,
                column: "y",
                value: "fast".into()
            }
        );
        assert_eq!(
            error("series,x,y\na,NaN,2\n"),
            CsvError::Number {
                line: 2,
                column: "x",
                value: "NaN".into()
            }
        );
        assert_eq!(
            error("series,x,y\na,1,\n").to_string(),
            "line 2: y \"\" is not a finite number"
        );
    }

    #[test]
    fn two_series_draw_two_lines_with_markers_and_a_legend() {
        let series = parse_csv("series,x,y\nalpha,1,1\nalpha,100,3\nbeta,1,2\nbeta,100,1\n")
            .expect("valid CSV");
        for log_x in [false, true] {
            let axes = LineAxes {
                title: "cost",
                x_label: "subscribers",
                y_label: "µs",
                log_x,
                y_from_zero: true,
            };
            let svg = lines_svg(&series, axes).unwrap();
            assert!(svg.starts_with("<svg"));
            for name in ["alpha", "beta"] {
                assert!(svg.lines().any(|line| line == name), "{name} in the legend");
            }
            // A line and a legend sample per series, each in its own colour.
            for index in 0..2 {
                let stroke = format!(
                    "stroke=\"#{:02X}{:02X}{:02X}\"",
                    colour(index).0,
                    colour(index).1,
                    colour(index).2
                );
                let lines = svg
                    .lines()
                    .filter(|l| l.contains("<polyline") && l.contains(&stroke));
                assert_eq!(lines.count(), 2, "series {index}:\n{svg}");
            }
            assert_eq!(svg.matches("<circle").count(), 4, "a marker per point");
        }
        let at_zero = parse_csv("series,x,y\na,0,1\n").unwrap();
        let axes = LineAxes {
            log_x: true,
            ..LineAxes::default()
        };
        assert!(lines_svg(&at_zero, axes).unwrap_err().contains("--log-x"));
        // One point, and every y equal: the axes still have a span.
        assert!(lines_svg(&at_zero, LineAxes::default()).is_ok());
    }
}
