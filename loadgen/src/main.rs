//! `uringcast-load`: a load generator for WebSocket servers on this machine, built on io_uring
//! direct descriptors so one process can hold more connections than its descriptor limit.
//!
//! Scenarios: `connect` (open N idle connections at a rate, hold, close). Every run is bounded
//! in count and time, targets loopback addresses only, and stops by itself.
//!
//! Exit codes: 0 when the run reached its target, 1 when it did not or failed, 2 for a bad URL
//! or flag, or a target beyond what the flags and this machine's limits can hold.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![deny(unsafe_op_in_unsafe_fn)]

mod capacity;
mod error;
mod procfs;
mod report;
mod scenario;
mod source;
mod target;
mod uring;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::capacity::{Capacity, SystemLimits};
use crate::error::{LoadError, EXIT_FAILED, EXIT_OK};
use crate::scenario::connect;
use crate::uring::ClientFeatures;

/// A load generator for WebSocket servers on this machine (loopback only), on io_uring.
#[derive(Parser, Debug)]
#[command(name = "uringcast-load", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Open N WebSocket connections at a steady rate, hold them idle, then close them;
    /// reports handshake latency and, with --server-pid, the server's memory and CPU cost.
    Connect(ConnectArgs),
}

#[derive(Args, Debug)]
struct ConnectArgs {
    /// ws://HOST[:PORT][/PATH]; HOST must be in 127.0.0.0/8, [::1] or localhost.
    url: String,
    /// Connections to open and hold.
    #[arg(long, default_value_t = connect::DEFAULT_CONNECTIONS)]
    connections: u64,
    /// New connections per second during the ramp, over all threads.
    #[arg(long, default_value_t = connect::DEFAULT_RATE)]
    rate: f64,
    /// Seconds to hold the connections after the ramp.
    #[arg(long, default_value_t = connect::DEFAULT_HOLD_SECS)]
    duration: f64,
    /// Client threads, each with its own ring and direct descriptor table.
    #[arg(long, default_value_t = connect::DEFAULT_THREADS)]
    threads: usize,
    /// Source addresses, round-robin: a range 127.0.0.2-127.0.0.40, a comma list, or both
    /// [default: the kernel picks].
    #[arg(long)]
    source: Option<String>,
    /// Seconds for a connection to reach a verified 101.
    #[arg(long, default_value_t = connect::DEFAULT_HANDSHAKE_TIMEOUT_SECS)]
    handshake_timeout: f64,
    /// Seconds for the closing handshake at the end.
    #[arg(long, default_value_t = connect::DEFAULT_CLOSE_TIMEOUT_SECS)]
    close_timeout: f64,
    /// The server's pid: report its RSS and CPU time from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Upper bounds that keep a run bounded: a typo must not become a week-long run.
const MAX_CONNECTIONS: u64 = 10_000_000;
const MAX_THREADS: usize = 256;
const MAX_RATE: f64 = 1_000_000.0;
const MAX_HOLD_SECS: f64 = 86_400.0;
const MAX_TIMEOUT_SECS: f64 = 600.0;

fn main() {
    let cli = Cli::parse();
    let code = match cli.scenario {
        Scenario::Connect(args) => match run_connect(args) {
            Ok(code) => code,
            Err(error) => {
                eprintln!("uringcast-load: {error}");
                error.exit_code()
            }
        },
    };
    std::process::exit(code);
}

fn run_connect(args: ConnectArgs) -> Result<i32, LoadError> {
    let target: target::Target = args.url.parse()?;
    let sources = match &args.source {
        Some(spec) => source::parse_sources(spec)?,
        None => Vec::new(),
    };
    if sources.iter().any(|s| s.is_ipv4() != target.addr.is_ipv4()) {
        return Err(LoadError::Usage(format!(
            "--source addresses must be of the same family as the target {}",
            target.addr.ip()
        )));
    }
    range(
        "--connections",
        args.connections as f64,
        1.0,
        MAX_CONNECTIONS as f64,
    )?;
    range("--threads", args.threads as f64, 1.0, MAX_THREADS as f64)?;
    if !(args.rate > 0.0 && args.rate <= MAX_RATE) {
        return Err(LoadError::Usage(format!(
            "--rate {} is out of range (more than 0, at most {MAX_RATE})",
            args.rate
        )));
    }
    let hold = seconds("--duration", args.duration, 0.0, MAX_HOLD_SECS)?;
    let handshake_timeout = seconds(
        "--handshake-timeout",
        args.handshake_timeout,
        0.001,
        MAX_TIMEOUT_SECS,
    )?;
    let close_timeout = seconds("--close-timeout", args.close_timeout, 0.0, MAX_TIMEOUT_SECS)?;
    if let Some(pid) = args.server_pid {
        procfs::ProcessSample::read(pid).map_err(|source| LoadError::ServerPid { pid, source })?;
    }
    let threads = args.threads.min(args.connections as usize);

    let (soft, hard) = capacity::raise_descriptor_limit().map_err(|source| LoadError::Io {
        what: "cannot raise RLIMIT_NOFILE".into(),
        source,
    })?;
    let limits = SystemLimits::read().map_err(|source| LoadError::Io {
        what: "cannot read the system's limits".into(),
        source,
    })?;
    let capacity = Capacity {
        threads: threads as u64,
        slots_per_thread: limits.table_slots(),
        sources: sources.len().max(1) as u64,
        ports_per_source: limits.ports_per_source(),
    };
    println!(
        "capacity: {capacity} (RLIMIT_NOFILE {soft}/{hard}, ports {}-{})",
        limits.port_range.0, limits.port_range.1
    );
    capacity.check(args.connections)?;
    if let Some(per_source) = capacity.crowded_sources(args.connections) {
        eprintln!(
            "uringcast-load: warning: {per_source} connections per source address is past half \
             of its {} ephemeral ports, where the kernel's connect() port search slows down; \
             add --source addresses to keep each below {}",
            capacity.ports_per_source,
            capacity.ports_per_source / 2
        );
    }

    let features = ClientFeatures::probe(!sources.is_empty())?;
    let settings = connect::Settings {
        target,
        connections: args.connections,
        rate: args.rate,
        hold,
        threads,
        sources,
        handshake_timeout,
        close_timeout,
        server_pid: args.server_pid,
        progress: !args.quiet,
    };
    let report = connect::run(&settings, features, capacity)?;
    print!("{}", report.text());
    let _ = std::io::stdout().flush();
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report.json()).expect("a JSON value serialises");
        std::fs::write(path, json + "\n").map_err(|source| LoadError::Io {
            what: format!("cannot write {}", path.display()),
            source,
        })?;
    }
    Ok(if report.target_reached() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

fn range(flag: &str, value: f64, min: f64, max: f64) -> Result<(), LoadError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(LoadError::Usage(format!(
            "{flag} {value} is out of range (at least {min}, at most {max})"
        )))
    }
}

fn seconds(flag: &str, value: f64, min: f64, max: f64) -> Result<Duration, LoadError> {
    range(flag, value, min, max)?;
    Ok(Duration::from_secs_f64(value))
}
