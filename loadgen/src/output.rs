//! A report's outputs: its text on stdout, and the files asked for (`--json`, `--hdr`,
//! `--plot`), the same for a run and for a merge of runs.

use std::io::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::error::LoadError;
use crate::{hgrm, plot};

/// The files to write besides the text.
#[derive(Clone, Copy, Debug, Default)]
pub struct Files<'a> {
    /// The report as JSON.
    pub json: Option<&'a Path>,
    /// The latency histogram as `.hgrm` text.
    pub hdr: Option<&'a Path>,
    /// The latency curve as SVG.
    pub plot: Option<&'a Path>,
}

/// Prints `text`, then writes `json`, and `latency` (µs) as `.hgrm` text and as a plot titled
/// `title`, to the files asked for.
///
/// # Errors
///
/// [`LoadError::Io`] naming a file that cannot be written or drawn.
pub fn emit(
    text: &str,
    json: &Value,
    latency: &Histogram<u64>,
    title: &str,
    files: Files<'_>,
) -> Result<(), LoadError> {
    print!("{text}");
    let _ = std::io::stdout().flush();
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|source| LoadError::Io {
            what: format!("cannot write {}", path.display()),
            source,
        })
    };
    if let Some(path) = files.json {
        let json = serde_json::to_string_pretty(json).expect("a JSON value serialises");
        write(path, json + "\n")?;
    }
    if let Some(path) = files.hdr {
        write(path, hgrm::percentile_distribution(latency))?;
    }
    if let Some(path) = files.plot {
        let svg = plot::latency_svg(latency, title).map_err(|e| LoadError::Io {
            what: format!("cannot draw {}", path.display()),
            source: std::io::Error::other(e),
        })?;
        write(path, svg)?;
    }
    Ok(())
}
