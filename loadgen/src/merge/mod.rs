//! `uringcast-load merge`: the `--json` reports of several runs of one scenario (processes
//! started together with `--start-at`) read back and added into one report, printed
//! and written like a single run's.
//!
//! Counts sum; latency histograms, carried losslessly in each report's `histograms`, add count
//! by count, so the merged percentiles are those of every sample together. Reports must agree
//! on whatever makes their sum mean something (see [`SAME`]); connection counts, threads and
//! addresses may differ, and sum or gather.

mod outcome;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use self::outcome::{add, deflate, missing, zero, Fields};
use crate::cli::MergeArgs;
use crate::error::{LoadError, EXIT_FAILED, EXIT_OK};
use crate::output;
use crate::report::{self, Loop, TrafficReport};
use crate::scenario::broadcast::ClosedLoopTally;
use crate::scenario::traffic::ServerSamples;

/// Settings every report must share, by scenario: the shape of the traffic. Checked besides:
/// the URL's scheme, echo's URL path and its open-loop rate per connection. What is per process
/// (connection counts, threads, addresses, timeouts, output files) may differ, and so may
/// broadcast's topic (the URL's path): processes that each publish on one topic would see each
/// other's messages as duplicates, so several broadcast processes take a topic each.
const SAME: &[(&str, &[&str])] = &[
    (
        "echo",
        &[
            "duration_s",
            "payload",
            "encoding",
            "size",
            "inflight",
            "deflate",
            "deflate_send",
        ],
    ),
    (
        "broadcast",
        &[
            "duration_s",
            "publish",
            "inflight",
            "payload",
            "size",
            "deflate",
            "deflate_send",
        ],
    ),
];

/// Settings that add up, by scenario (broadcast's `rate` is each process's total).
const SUMMED: &[(&str, &[&str])] = &[
    ("echo", &["connections", "rate", "threads"]),
    (
        "broadcast",
        &["subscribers", "publishers", "rate", "threads"],
    ),
];

/// Runs `merge`: reads, checks and adds the reports, prints the result and writes the files
/// asked for; the exit code: 0 when the runs together were clean (every connection up, every
/// message once, intact, in order), 1 when not.
///
/// # Errors
///
/// [`LoadError::Io`] for a report that cannot be read or a file that cannot be written;
/// [`LoadError::Usage`] for a report that is not JSON, lacks a figure or a histogram, or
/// disagrees with the first on a setting.
pub fn run(args: &MergeArgs) -> Result<i32, LoadError> {
    let mut reports = Vec::with_capacity(args.reports.len());
    for path in &args.reports {
        if args.reports.iter().filter(|p| *p == path).count() > 1 {
            return Err(LoadError::Usage(format!(
                "{} is given twice: its counts would be added twice",
                path.display()
            )));
        }
        reports.push((path.display().to_string(), report::read_json(path)?));
    }
    let (report, mut json) = merge(&reports)?;
    if let Value::Object(map) = &mut json {
        let settings = map.get_mut("settings").and_then(Value::as_object_mut);
        if let Some(settings) = settings {
            let name = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
            settings.insert("json".into(), name(&args.output.json).into());
            settings.insert("hdr".into(), name(&args.output.hdr).into());
            settings.insert("plot".into(), name(&args.output.plot).into());
        }
    }
    let files = args.output.files();
    output::emit(
        &report.text(),
        &json,
        report.latency(),
        &report.plot_title(),
        files,
    )?;
    // An interrupted run among them makes it 1, not 130: this process was not interrupted.
    Ok(if report.clean() && !report.outcome.interrupted {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

/// Adds `reports` (name, JSON): the merged report, and its JSON with `merged_from` (each
/// report's name, start and counts).
///
/// # Errors
///
/// [`LoadError::Usage`] naming the report and the field: a scenario other than echo or
/// broadcast, a setting that differs from the first report's, a figure or histogram missing or
/// unreadable.
pub fn merge(reports: &[(String, Value)]) -> Result<(TrafficReport, Value), LoadError> {
    let Some((first_name, first)) = reports.first() else {
        return Err(LoadError::Usage("no report to merge".into()));
    };
    let scenario = match first["scenario"].as_str() {
        Some("echo") => "echo",
        Some("broadcast") => "broadcast",
        Some(other) => {
            return Err(LoadError::Usage(format!(
                "{first_name}: a {other} report: merge adds echo and broadcast reports"
            )))
        }
        None => {
            return Err(LoadError::Usage(format!(
                "{first_name}: no scenario: not a uringcast-load --json report"
            )))
        }
    };
    for (name, report) in &reports[1..] {
        agree(first_name, first, name, report, scenario)?;
    }
    same_nodes_or_none(reports)?;
    let pace = match first["loop"].as_str() {
        Some("open") => Loop::Open,
        Some("closed") => Loop::Closed,
        _ => return Err(missing(first_name, "loop (\"open\" or \"closed\")")),
    };
    let mut outcome = zero(deflate(&first["settings"]));
    let mut span: Option<(f64, f64)> = None;
    let mut merged_from = Vec::with_capacity(reports.len());
    for (name, report) in reports {
        let one = Fields::new(name, report).outcome()?;
        let start = one.started_at_unix_s;
        let end = start + one.duration.as_secs_f64();
        span = Some(span.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
        merged_from.push(json!({
            "report": name,
            "started_at_unix_s": start,
            "duration_s": one.duration.as_secs_f64(),
            "connections": one.target,
            "received": one.tally.received,
        }));
        add(&mut outcome, one, name)?;
    }
    // The merged traffic spans from the first start to the last end: with --start-at, about
    // one run's duration, so that the throughput is the sum of the processes'.
    let (start, end) = span.unwrap_or_default();
    outcome.started_at_unix_s = start;
    outcome.duration = Duration::try_from_secs_f64(end - start).unwrap_or_default();
    outcome.server = server(reports);
    let settings = settings(reports, scenario);
    let closed_loop = closed_loop(reports)?;
    let report = TrafficReport {
        scenario,
        headline: headline(scenario, &settings, reports.len()),
        settings,
        pace,
        unit: if scenario == "echo" {
            "echoes"
        } else {
            "deliveries"
        },
        outcome,
        closed_loop,
        churn: None,
    };
    let mut json = report.json();
    if let Value::Object(map) = &mut json {
        map.insert("merged_from".into(), Value::Array(merged_from));
    }
    Ok((report, json))
}

/// Refuses `report` unless it is of `scenario` and shares `first`'s settings of [`SAME`], its
/// loop and its URL's scheme and path.
fn agree(
    first_name: &str,
    first: &Value,
    name: &str,
    report: &Value,
    scenario: &str,
) -> Result<(), LoadError> {
    let differ = |field: &str, mine: &Value, theirs: &Value| {
        LoadError::Usage(format!(
            "{name}: {field} is {theirs}, but {first_name} has {mine}: reports of different \
             settings do not add up"
        ))
    };
    for key in ["scenario", "loop"] {
        if report[key] != first[key] {
            return Err(differ(key, &first[key], &report[key]));
        }
    }
    let (mine, theirs) = (&first["settings"], &report["settings"]);
    let url = |settings: &Value| -> [Value; 2] {
        settings["url"]
            .as_str()
            .map_or([Value::Null, Value::Null], |url| {
                let (scheme, path) = scheme_and_path(url);
                [scheme.into(), path.into()]
            })
    };
    let parts = ["scheme", "path"].iter().zip(url(mine)).zip(url(theirs));
    // Broadcast's topic is its path: it may differ (see SAME).
    for ((field, mine), theirs) in parts.take(if scenario == "echo" { 2 } else { 1 }) {
        if mine != theirs {
            return Err(differ(&format!("settings.url's {field}"), &mine, &theirs));
        }
    }
    for key in by_scenario(SAME, scenario) {
        if mine[key] != theirs[key] {
            return Err(differ(&format!("settings.{key}"), &mine[key], &theirs[key]));
        }
    }
    // Echo's --rate is over all of a process's connections: what must match is each
    // connection's share.
    let per_connection = |s: &Value| {
        let (rate, connections) = (s["rate"].as_f64()?, s["connections"].as_f64()?);
        (connections > 0.0).then(|| rate / connections)
    };
    if scenario == "echo" {
        let (a, b) = (per_connection(mine), per_connection(theirs));
        let same = match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()),
            (a, b) => a == b,
        };
        if !same {
            let value = |v: Option<f64>| v.map_or(Value::Null, Value::from);
            return Err(differ(
                "settings.rate per connection (rate / connections)",
                &value(a),
                &value(b),
            ));
        }
    }
    Ok(())
}

/// Broadcast's `closed_loop` figures added: each process kept its own P in flight, so the
/// sums (of P, of completions and timeouts, of each process's most outstanding) bound the
/// whole. `None` for open-loop reports (`agree` made the loops match).
fn closed_loop(reports: &[(String, Value)]) -> Result<Option<ClosedLoopTally>, LoadError> {
    let mut total: Option<ClosedLoopTally> = None;
    for (name, report) in reports {
        let c = &report["closed_loop"];
        if c.is_null() {
            continue;
        }
        let count = |key: &str| {
            c[key]
                .as_u64()
                .ok_or_else(|| missing(name, &format!("closed_loop.{key}")))
        };
        let one = ClosedLoopTally {
            inflight: count("inflight")?,
            timeout_s: c["publish_timeout_s"].as_f64().unwrap_or_default(),
            completed: count("completed")?,
            timed_out: count("timed_out")?,
            max_outstanding: count("max_outstanding")?,
        };
        total = Some(match total {
            None => one,
            Some(t) => ClosedLoopTally {
                inflight: t.inflight + one.inflight,
                timeout_s: t.timeout_s.max(one.timeout_s),
                completed: t.completed + one.completed,
                timed_out: t.timed_out + one.timed_out,
                max_outstanding: t.max_outstanding + one.max_outstanding,
            },
        });
    }
    Ok(total)
}

/// Refuses reports of which some count deliveries by node (`nodes`) and some do not: the
/// merged nodes would not add up to the merged total.
fn same_nodes_or_none(reports: &[(String, Value)]) -> Result<(), LoadError> {
    let has_nodes = |report: &Value| report["nodes"].is_array();
    let with = reports.iter().find(|(_, r)| has_nodes(r));
    let without = reports.iter().find(|(_, r)| !has_nodes(r));
    if let (Some((with, _)), Some((without, _))) = (with, without) {
        return Err(LoadError::Usage(format!(
            "{with} counts deliveries by node (nodes) but {without} does not: their nodes would \
             not add up to the total; merge them in separate groups"
        )));
    }
    Ok(())
}

/// `ws` and `/path` of `ws://host:port/path` (the host may be written differently:
/// `localhost`, `127.0.0.1`, another address of the same server, or its name).
fn scheme_and_path(url: &str) -> (&str, &str) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    (scheme, rest.find('/').map_or("/", |at| &rest[at..]))
}

fn by_scenario(
    table: &[(&str, &'static [&'static str])],
    scenario: &str,
) -> &'static [&'static str] {
    table
        .iter()
        .find(|(s, _)| *s == scenario)
        .map_or(&[], |(_, keys)| keys)
}

/// The merged `settings`: the first report's, with [`SUMMED`] summed, address lists gathered,
/// and what differs between reports (start time, server pid) `null`.
fn settings(reports: &[(String, Value)], scenario: &str) -> Value {
    let mut merged = reports[0].1["settings"].clone();
    let Some(map) = merged.as_object_mut() else {
        return merged;
    };
    for key in by_scenario(SUMMED, scenario) {
        let values = reports.iter().map(|(_, r)| &r["settings"][*key]);
        if values.clone().all(Value::is_null) {
            continue;
        }
        let sum = if values.clone().all(Value::is_u64) {
            values.filter_map(Value::as_u64).sum::<u64>().into()
        } else {
            values.filter_map(Value::as_f64).sum::<f64>().into()
        };
        map.insert((*key).to_owned(), sum);
    }
    for key in ["sources", "target_addresses"] {
        let mut all: Vec<Value> = Vec::new();
        for (_, report) in reports {
            for address in report["settings"][key].as_array().into_iter().flatten() {
                if !all.contains(address) {
                    all.push(address.clone());
                }
            }
        }
        map.insert(key.to_owned(), Value::Array(all));
    }
    for key in [
        "start_at_unix_s",
        "server_pid",
        "url",
        "path",
        "publisher_url",
    ] {
        if reports
            .iter()
            .any(|(_, r)| r["settings"][key] != reports[0].1["settings"][key])
        {
            map.insert(key.to_owned(), Value::Null);
        }
    }
    merged
}

/// The merged report's first line, from the merged settings.
fn headline(scenario: &str, s: &Value, reports: usize) -> String {
    let url = s["url"].as_str().unwrap_or("(several URLs)");
    let size = &s["size"];
    let seconds = s["duration_s"].as_f64().unwrap_or_default();
    let threads = &s["threads"];
    // As a run prints its --rate: 50, not 50.0.
    let rate = s["rate"].as_f64().unwrap_or_default();
    let text = if scenario == "echo" {
        let pace = match s["inflight"].as_u64() {
            Some(inflight) => format!("closed loop, {inflight} in flight per connection"),
            None => format!("open loop at {rate} messages/s"),
        };
        let kind = match (s["payload"].as_str(), s["encoding"].as_str()) {
            (Some("json"), _) => "JSON tick",
            (_, Some(encoding)) => encoding,
            _ => "",
        };
        format!(
            "echo {url}: {} connections, {size} B {kind} messages, {pace}, {seconds:.1} s, \
             {threads} thread(s)",
            s["connections"]
        )
    } else {
        let pace = match (s["inflight"].as_u64(), s["publish"].as_str()) {
            (Some(inflight), _) => format!("with {inflight} in flight each run"),
            // Nobody here publishes: the rate set in each report is not what was sent.
            (None, Some("external")) => "publishing elsewhere".to_owned(),
            (None, _) => format!("at {rate} messages/s in total"),
        };
        let pace_name = if s["inflight"].is_u64() {
            "closed"
        } else {
            "open"
        };
        format!(
            "broadcast {url}: {} subscribers, {} {} publisher(s) {pace}, {size} B {}messages, \
             {seconds:.1} s, {threads} thread(s), {pace_name} loop",
            s["subscribers"],
            s["publishers"],
            match s["publish"].as_str() {
                Some("websocket") => "WebSocket",
                Some("http") => "HTTP",
                _ => "outside",
            },
            if s["payload"] == "json" {
                "JSON tick "
            } else {
                ""
            },
        )
    };
    format!("{text}; {reports} reports merged")
}

/// The server's figures, when every report sampled the same server (`--server-pid`): each
/// process measured all of it over nearly the same time, so CPU and RSS are the largest
/// reading (RSS before connecting the smallest), not a sum. Reports of several servers, or
/// some without, give none.
fn server(reports: &[(String, Value)]) -> Option<ServerSamples> {
    let servers: Vec<&Value> = reports.iter().map(|(_, r)| &r["server"]).collect();
    let pid = servers.first()?["pid"].as_u64()?;
    if servers.iter().any(|s| s["pid"].as_u64() != Some(pid)) {
        if servers.iter().any(|s| !s.is_null()) {
            eprintln!(
                "uringcast-load: server figures left out: the reports did not all sample one \
                 server (--server-pid)"
            );
        }
        return None;
    }
    let max = |key: &str| servers.iter().filter_map(|s| s[key].as_u64()).max();
    Some(ServerSamples {
        pid: u32::try_from(pid).ok()?,
        cpu_s: servers
            .iter()
            .filter_map(|s| s["cpu_s"].as_f64())
            .fold(0.0, f64::max),
        rss_before_bytes: servers
            .iter()
            .filter_map(|s| s["rss_before_bytes"].as_u64())
            .min()?,
        rss_connected_bytes: max("rss_connected_bytes")?,
        rss_bytes: max("rss_bytes")?,
        stop: Err("not kept in a --json report".into()),
    })
}
