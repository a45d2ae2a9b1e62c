//! `uringcast-load plot` end to end: two real `echo` reports against a uringcast server
//! in-process drawn as two named latency curves; the refusals (a histogram the reports lack, a
//! malformed NAME=PATH, bad CSV) with exit 2; and a line chart from CSV.

// The shared harness and servers; this file uses part of them.
#[allow(dead_code)]
#[path = "traffic/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "traffic/peers.rs"]
mod peers;

use std::path::Path;

use uringcast::config::Mode;

use self::harness::{describe, load, serial, temp};
use self::peers::uringcast;

const EXIT_USAGE: i32 = 2;

fn text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// A refusal: exit 2 and one line on stderr that says `why`.
fn assert_refused(output: &std::process::Output, why: &str) {
    assert_eq!(
        output.status.code(),
        Some(EXIT_USAGE),
        "{}",
        describe(output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(why), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn two_echo_reports_draw_two_named_curves() {
    let _serial = serial();
    let server = uringcast(Mode::Echo, None);
    let url = format!("ws://{}/", server.local_addr());
    let reports = [temp("plot-one", "json"), temp("plot-four", "json")];
    for (report, inflight) in reports.iter().zip(["1", "4"]) {
        let output = load(&[
            "echo",
            &url,
            "--connections",
            "4",
            "--inflight",
            inflight,
            "--duration",
            "0.5",
            "--quiet",
            "--json",
            text(report),
        ]);
        assert!(output.status.success(), "{}", describe(&output));
    }
    server.shutdown();

    let svg_path = temp("plot-latency", "svg");
    let one = format!("inflight 1={}", text(&reports[0]));
    let four = format!("inflight 4={}", text(&reports[1]));
    let output = load(&[
        "plot",
        "latency",
        text(&svg_path),
        "--title",
        "echo",
        &one,
        &four,
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let svg = std::fs::read_to_string(&svg_path).expect("the SVG was written");
    let _ = std::fs::remove_file(&svg_path);
    assert!(svg.starts_with("<svg"));
    for name in ["inflight 1", "inflight 4", "echo", "99%"] {
        assert!(svg.lines().any(|line| line == name), "{name} in the SVG");
    }

    let refusals = [
        (
            vec!["--histogram", "no_such_latency_us", &one],
            "histograms.no_such_latency_us",
        ),
        (vec![text(&reports[0])], "NAME=REPORT.json"),
        (vec!["=a.json"], "NAME=REPORT.json"),
        (vec![&one, &one], "given twice"),
    ];
    // OUT.svg forgotten: the first report would be the output.
    let output = load(&["plot", "latency", &one, &four]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_USAGE),
        "{}",
        describe(&output)
    );
    assert!(reports[0].exists() && reports[1].exists());
    for (args, why) in refusals {
        let mut all = vec!["plot", "latency", text(&svg_path)];
        all.extend(args);
        assert_refused(&load(&all), why);
        assert!(!svg_path.exists(), "no SVG after a refusal");
    }
    for report in &reports {
        let _ = std::fs::remove_file(report);
    }
}

#[test]
fn a_csv_draws_one_line_per_series_and_bad_rows_are_named() {
    let csv = temp("plot-lines", "csv");
    let svg_path = temp("plot-lines", "svg");
    std::fs::write(
        &csv,
        "series,x,y\nuringcast,1000,0.9\nuWS,1000,1.1\nuringcast,100,1.4\nuWS,100,1.6\n",
    )
    .expect("the CSV written");
    let output = load(&[
        "plot",
        "lines",
        text(&svg_path),
        "--csv",
        text(&csv),
        "--title",
        "CPU per delivery",
        "--x-label",
        "subscribers",
        "--y-label",
        "CPU µs per delivery",
        "--log-x",
        "--y-from-zero",
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let svg = std::fs::read_to_string(&svg_path).expect("the SVG was written");
    let _ = std::fs::remove_file(&svg_path);
    for name in ["uringcast", "uWS", "CPU per delivery", "subscribers"] {
        assert!(svg.lines().any(|line| line == name), "{name} in the SVG");
    }
    assert_eq!(svg.matches("<circle").count(), 4, "a marker per point");

    std::fs::write(&csv, "series,x,y\nuringcast,1000,0.9\nuWS,many,1.1\n").expect("rewritten");
    let output = load(&["plot", "lines", text(&svg_path), "--csv", text(&csv)]);
    let _ = std::fs::remove_file(&csv);
    assert_refused(&output, "line 3: x \"many\"");
    assert!(!svg_path.exists());
}
