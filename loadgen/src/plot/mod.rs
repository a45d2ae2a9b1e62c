//! SVG charts: the latency-by-percentile curve ([`percentiles`]) of a run or of several, and a
//! line chart of any series ([`lines`]), drawn by one function ([`svg`]) with one look: size,
//! fonts, mesh, colours and legend. `uringcast-load plot` ([`command`]) draws either from files.

pub mod command;
pub mod lines;
pub mod percentiles;

use std::ops::Range;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

pub use self::percentiles::latency_svg;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 540;
/// Radius of a point marker, in pixels.
const MARKER_RADIUS: u32 = 3;

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Its legend entry; with no names at all a chart has no legend.
    pub name: String,
    /// Its points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// What a chart shows around its series.
pub struct Chart<'a> {
    /// The caption; none when empty.
    pub title: &'a str,
    /// The x axis's description.
    pub x_label: &'a str,
    /// The y axis's description.
    pub y_label: &'a str,
    /// The x axis: its range and scale.
    pub x: Axis,
    /// The y range (always linear).
    pub y: Range<f64>,
    /// How x tick labels read; plotters' own numbers when `None`.
    pub x_ticks: Option<&'a dyn Fn(&f64) -> String>,
    /// How y tick labels read; plotters' own numbers when `None`.
    pub y_ticks: Option<&'a dyn Fn(&f64) -> String>,
    /// Draw a marker on each point, not only the line through them.
    pub markers: bool,
}

/// An x axis's range and scale.
#[derive(Clone, Debug, PartialEq)]
pub enum Axis {
    /// Evenly spaced values.
    Linear(Range<f64>),
    /// Evenly spaced powers of ten; the range must be positive.
    Log(Range<f64>),
}

/// Draws `series` on `chart` to an SVG document, each series in its own colour.
///
/// # Errors
///
/// A drawing error from `plotters`, as text.
pub fn svg(chart: &Chart<'_>, series: &[Series]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        match &chart.x {
            Axis::Linear(x) => draw(&root, chart, x.clone(), series)?,
            Axis::Log(x) => draw(&root, chart, x.clone().log_scale(), series)?,
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The colour of the `index`th series: a palette of 99 readable colours, on white.
pub fn colour(index: usize) -> RGBColor {
    let (r, g, b) = Palette99::COLORS[index % Palette99::COLORS.len()];
    RGBColor(r, g, b)
}

/// `x` with at most six decimals and none that end in 0: 100 → "100", 0.25 → "0.25",
/// 0.1 + 0.2 → "0.3".
pub fn decimal(x: f64) -> String {
    let text = format!("{x:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// Draws on `root` with an x axis of any scale: a log axis is another coordinate type.
fn draw<X>(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    chart: &Chart<'_>,
    x: X,
    series: &[Series],
) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let mut builder = ChartBuilder::on(root);
    if !chart.title.is_empty() {
        builder.caption(chart.title, ("sans-serif", 20));
    }
    let mut context = builder
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, chart.y.clone())
        .map_err(|e| e.to_string())?;
    let mut mesh = context.configure_mesh();
    mesh.x_desc(chart.x_label).y_desc(chart.y_label);
    if let Some(ticks) = chart.x_ticks {
        mesh.x_label_formatter(ticks);
    }
    if let Some(ticks) = chart.y_ticks {
        mesh.y_label_formatter(ticks);
    }
    mesh.draw().map_err(|e| e.to_string())?;
    for (index, one) in series.iter().enumerate() {
        let style = colour(index).stroke_width(2);
        let line = context
            .draw_series(LineSeries::new(one.points.iter().copied(), style))
            .map_err(|e| e.to_string())?;
        if !one.name.is_empty() {
            line.label(one.name.as_str()).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], colour(index).stroke_width(2))
            });
        }
        if chart.markers {
            let fill = colour(index).filled();
            context
                .draw_series(
                    one.points
                        .iter()
                        .map(|point| Circle::new(*point, MARKER_RADIUS, fill)),
                )
                .map_err(|e| e.to_string())?;
        }
    }
    if series.iter().any(|one| !one.name.is_empty()) {
        context
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_end_in_a_significant_digit() {
        assert_eq!(decimal(100.0), "100");
        assert_eq!(decimal(10_000.0), "10000");
        assert_eq!(decimal(0.25), "0.25");
        assert_eq!(decimal(0.1 + 0.2), "0.3");
        assert_eq!(decimal(99.9), "99.9");
        assert_eq!(decimal(-1.5), "-1.5");
        assert_eq!(decimal(-0.0000001), "0");
    }
}
