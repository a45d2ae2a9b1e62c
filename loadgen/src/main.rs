//! `uringcast-load`: a load generator for WebSocket servers on this machine, built on io_uring
//! direct descriptors so one process can hold more connections than its descriptor limit.
//!
//! Scenarios: `connect` (open N idle connections at a rate, hold, close), `echo` (messages
//! echoed and checked byte for byte, closed or open loop), `broadcast` (subscribers checking
//! every delivery of publishers' messages), `sse` (the same over Server-Sent Events streams,
//! each event checked by its id too) and `pusher` (broadcast's checks over Pusher Channels
//! protocol 7, signed as an app's backend signs). `merge` adds reports; `plot` draws
//! comparison charts from reports or CSV. Every run is bounded in count and time, and stops by itself.
//! A URL names any host: an address, or a DNS name resolved at start.
//!
//! Exit codes: 0 when the run reached its target (and, for messages, every one arrived once,
//! intact, in order), 1 when it did not or failed, 2 for a bad URL or flag, or a target beyond
//! what the flags and this machine's limits can hold, 130 after Ctrl-C (with the summary).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![deny(unsafe_op_in_unsafe_fn)]

mod broadcast_run;
mod capacity;
mod cli;
mod endpoints;
mod error;
mod hgrm;
mod interrupt;
mod merge;
mod output;
mod plot;
mod procfs;
mod pusher_run;
mod report;
mod scenario;
mod source;
mod sse_run;
mod target;
mod tls;
mod uring;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser as _;
use serde_json::{json, Value};
use uringcast::protocol::OpCode;

use crate::capacity::{Capacity, SystemLimits};
use crate::cli::{
    inflight_in_range, positive, range, seconds, size_in_range, Cli, ConnectArgs, EchoArgs,
    Payload, ProtocolArg, Scenario, SessionArgs, TrafficArgs, MAX_CONNECTIONS, MAX_HOLD_SECS,
    MAX_MESSAGE_RATE, MAX_RATE, MAX_THREADS, MAX_TIMEOUT_SECS,
};
use crate::error::{LoadError, EXIT_FAILED, EXIT_OK};
use crate::report::{Loop, TrafficReport};
use crate::scenario::connect;
use crate::scenario::echo::{self, EchoWork, Pace};
use crate::scenario::session;
use crate::scenario::stamp::{Encoding, Stamper};
use crate::scenario::tick;
use crate::scenario::traffic::{self, Deflate, NoSenders, ProgressStyle};
use crate::uring::{ClientFeatures, RecvBuffers};

/// Exit code of a run stopped by Ctrl-C (after its summary).
const EXIT_INTERRUPTED: i32 = 130;

fn main() {
    let cli = Cli::parse();
    interrupt::install();
    let result = match cli.scenario {
        Scenario::Connect(args) => run_connect(args),
        Scenario::Echo(args) => run_echo(args),
        Scenario::Broadcast(args) => broadcast_run::run(args),
        Scenario::Sse(args) => sse_run::run(args),
        Scenario::Merge(args) => merge::run(&args),
        Scenario::Plot(args) => plot::command::run(&args),
        Scenario::Pusher(args) => pusher_run::run(args),
    };
    let code = match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("uringcast-load: {error}");
            error.exit_code()
        }
    };
    std::process::exit(code);
}

fn run_echo(args: EchoArgs) -> Result<i32, LoadError> {
    if args.binary && args.traffic.payload == Payload::Json {
        return Err(LoadError::Usage(
            "--binary cannot be used with --payload json: a tick is a text message".into(),
        ));
    }
    if args.binary && session_needs_text(&args.traffic) {
        return Err(LoadError::Usage(
            "--binary cannot be used with --protocol socketio, --payload-at or \
             --publish-template: the payload travels as a JSON string"
                .into(),
        ));
    }
    let (encoding, size) = payload(
        args.traffic.payload,
        args.text || session_needs_text(&args.traffic),
        args.size,
        echo::DEFAULT_SIZE,
        "connection",
    )?;
    let pace = match (args.inflight, args.rate) {
        (_, Some(rate)) => {
            positive("--rate", rate, MAX_MESSAGE_RATE)?;
            Pace::Open { rate }
        }
        (inflight, None) => {
            let inflight = inflight.unwrap_or(echo::DEFAULT_INFLIGHT);
            inflight_in_range(inflight)?;
            Pace::Closed { inflight }
        }
    };
    let duration = args.traffic.duration.unwrap_or(echo::DEFAULT_DURATION_SECS);
    let prepared = prepare(
        &args.url,
        None,
        args.connections,
        &args.traffic,
        duration,
        "echo",
    )?;
    let stamper = Stamper::new(encoding, size);
    let opcode = encoding.opcode();
    let t = &args.traffic;
    let settings_json = prepared.settings_json(t, duration, json!({
        "connections": args.connections,
        "size": size,
        "encoding": match opcode { OpCode::Text => "text", _ => "binary" },
        "inflight": match pace { Pace::Closed { inflight } => Some(inflight), Pace::Open { .. } => None },
        "rate": match pace { Pace::Open { rate } => Some(rate), Pace::Closed { .. } => None },
    }));
    let (loop_kind, pace_text) = match pace {
        Pace::Closed { inflight } => (
            Loop::Closed,
            format!("closed loop, {inflight} in flight per connection"),
        ),
        Pace::Open { rate } => (Loop::Open, format!("open loop at {rate} messages/s")),
    };
    let headline = format!(
        "echo {}: {} connections, {} B {} messages, {pace_text}, {:.1} s, {} thread(s)",
        prepared.settings.target,
        args.connections,
        size,
        match encoding {
            Encoding::Text => "text",
            Encoding::Binary => "binary",
            Encoding::Json => "JSON tick",
        },
        duration,
        prepared.settings.threads,
    );
    let outcome = traffic::run(
        &prepared.settings,
        prepared.features,
        move |_, plan| EchoWork::new(plan, pace, opcode, stamper.clone()),
        &mut NoSenders,
    )?;
    let report = TrafficReport {
        scenario: "echo",
        settings: settings_json,
        pace: loop_kind,
        headline,
        unit: "echoes",
        outcome,
        closed_loop: None,
        churn: None,
    };
    finish(&report, t)
}

/// What every message scenario checks and sets up before its threads start.
struct Prepared {
    settings: traffic::Settings,
    features: ClientFeatures,
}

impl Prepared {
    /// The report's `settings`: the flags every message scenario shares, and the scenario's own
    /// (`specific`, an object).
    fn settings_json(&self, t: &TrafficArgs, duration: f64, specific: Value) -> Value {
        let mut settings = json!({
            "url": self.settings.target.to_string(),
            "duration_s": duration,
            "start_at_unix_s": t.start_at,
            "threads": self.settings.threads,
            "sources": self.settings.sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "target_addresses": self.settings.targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "connect_rate": t.connect_rate,
            "handshake_timeout_s": t.handshake_timeout,
            "drain_timeout_s": t.drain_timeout,
            "close_timeout_s": t.close_timeout,
            "server_pid": t.server_pid,
            "json": t.output.json,
            "hdr": t.output.hdr,
            "plot": t.output.plot,
            "quiet": t.quiet,
            "recv_bundle": self.features.recv_bundle,
            "payload": t.payload.name(),
            "deflate": t.deflate,
            "deflate_send": t.deflate_send,
            "protocol": t.session.protocol.name(),
            "on_open": t.session.on_open,
            "ready_when": t.session.ready_when,
            "payload_at": t.payload_at,
            "publish_template": t.publish_template,
        });
        if let (Some(all), Value::Object(own)) = (settings.as_object_mut(), t.reconnect.json()) {
            all.extend(own);
        }
        if let (Some(all), Value::Object(own)) = (settings.as_object_mut(), specific) {
            all.extend(own);
        }
        settings
    }
}

fn prepare(
    url: &str,
    path: Option<&str>,
    connections: u64,
    args: &TrafficArgs,
    duration: f64,
    emit: &str,
) -> Result<Prepared, LoadError> {
    // `sse`'s http:// and https:// streams run on the engine as ws:// and wss:// (the same
    // host, port, path and TLS); the target line names the URL's own scheme.
    let stream = sse_run::is_stream_url(url);
    let mut target: target::Target = if stream {
        sse_run::websocket_url(url)?.parse()?
    } else {
        url.parse()?
    };
    if let Some(path) = path {
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(LoadError::Usage(format!(
                "--path {path:?} must start with / and hold no whitespace"
            )));
        }
        target.path = path.to_owned();
    }
    let sources = parse_sources(args.source.as_deref(), &mut target)?;
    range(
        "--connections",
        connections as f64,
        1.0,
        MAX_CONNECTIONS as f64,
    )?;
    range("--threads", args.threads as f64, 1.0, MAX_THREADS as f64)?;
    positive("--connect-rate", args.connect_rate, MAX_RATE)?;
    let duration = seconds("--duration", duration, 0.0, MAX_HOLD_SECS)?;
    let start_at = args.start_at.map(start_at).transpose()?;
    let handshake_timeout = seconds(
        "--handshake-timeout",
        args.handshake_timeout,
        0.001,
        MAX_TIMEOUT_SECS,
    )?;
    let drain_timeout = seconds("--drain-timeout", args.drain_timeout, 0.0, MAX_TIMEOUT_SECS)?;
    let close_timeout = seconds("--close-timeout", args.close_timeout, 0.0, MAX_TIMEOUT_SECS)?;
    let targets = parse_targets(args.target_addresses.as_deref(), &target)?;
    let threads = args.threads.min(connections as usize);
    let features = ClientFeatures::probe(!sources.is_empty())?;
    let described = endpoints::describe(&target, &sources, &targets);
    if stream {
        print!("{}", described.replacen("target: ws", "target: http", 1));
    } else {
        print!("{described}");
    }
    check_reach(
        args.server_pid,
        threads,
        &sources,
        targets.len(),
        features,
        connections,
    )?;
    // Two buffers per connection of a thread: every connection may get a frame in the same
    // turn (a broadcast reaches all at once), and a starved receive costs a re-arm.
    let session = session_spec(
        &args.session,
        args.payload_at.as_deref(),
        args.publish_template.as_deref(),
        &target,
        emit,
    )?;
    let per_thread = connections.div_ceil(threads as u64);
    let recv = RecvBuffers {
        count: (per_thread * 2).next_power_of_two().clamp(1024, 32_768) as u16,
        bytes: RECV_BUFFER_BYTES,
    };
    Ok(Prepared {
        settings: traffic::Settings {
            tls: args.tls.config(&target)?,
            deflate: Deflate::from_flags(args.deflate, args.deflate_send),
            target,
            connections,
            connect_rate: args.connect_rate,
            duration,
            start_at,
            threads,
            sources,
            targets,
            split: None,
            handshake_timeout,
            close_timeout,
            drain_timeout,
            server_pid: args.server_pid,
            progress: if args.quiet {
                ProgressStyle::Off
            } else {
                ProgressStyle::Live
            },
            recv,
            // Their reports have no close figures: no reason to wait for the server to settle.
            close_cpu: false,
            session,
            streams_below: 0,
            reconnect: args.reconnect.policy()?,
        },
        features,
    })
}

/// `--start-at`'s time, which must be ahead (at most a day).
fn start_at(unix_s: f64) -> Result<SystemTime, LoadError> {
    let now = SystemTime::now();
    let at = UNIX_EPOCH + seconds("--start-at", unix_s, 0.0, f64::from(u32::MAX))?;
    match at.duration_since(now) {
        Ok(ahead) if ahead.as_secs_f64() <= MAX_HOLD_SECS => Ok(at),
        Ok(ahead) => Err(LoadError::Usage(format!(
            "--start-at {unix_s} is {:.0} s ahead, more than {MAX_HOLD_SECS} s",
            ahead.as_secs_f64()
        ))),
        Err(past) => Err(LoadError::Usage(format!(
            "--start-at {unix_s} is {:.3} s in the past: give a time after the connections are \
             up, such as $(($(date +%s)+5))",
            past.duration().as_secs_f64()
        ))),
    }
}

/// Receive buffers of 2 KiB: one small frame each, or with bundles a large one over several.
const RECV_BUFFER_BYTES: usize = 2048;

/// Prints the report and writes the files asked for; the exit code.
fn finish(report: &TrafficReport, args: &TrafficArgs) -> Result<i32, LoadError> {
    let files = args.output.files();
    output::emit(
        &report.text(),
        &report.json(),
        report.latency(),
        &report.plot_title(),
        files,
    )?;
    Ok(if report.outcome.interrupted {
        EXIT_INTERRUPTED
    } else if report.clean() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

fn run_connect(args: ConnectArgs) -> Result<i32, LoadError> {
    let mut target: target::Target = args.url.parse()?;
    let sources = parse_sources(args.source.as_deref(), &mut target)?;
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
    let targets = parse_targets(args.target_addresses.as_deref(), &target)?;
    let threads = args.threads.min(args.connections as usize);
    let features = ClientFeatures::probe(!sources.is_empty())?;
    print!("{}", endpoints::describe(&target, &sources, &targets));
    let capacity = check_reach(
        args.server_pid,
        threads,
        &sources,
        targets.len(),
        features,
        args.connections,
    )?;
    let session = session_spec(&args.session, None, None, &target, "message")?;
    let settings = connect::Settings {
        session,
        tls: args.tls.config(&target)?,
        deflate: args.deflate,
        target,
        connections: args.connections,
        rate: args.rate,
        hold,
        threads,
        sources,
        targets,
        handshake_timeout,
        close_timeout,
        server_pid: args.server_pid,
        progress: !args.quiet,
        reconnect: args.reconnect.policy()?,
        echo_sample: args.echo_sample,
    };
    let report = connect::run(&settings, features, capacity)?;
    let files = output::Files {
        json: args.json.as_deref(),
        ..output::Files::default()
    };
    let (text, json) = (report.text(), report.json());
    output::emit(&text, &json, &report.histograms.handshake, "", files)?;
    Ok(if report.target_reached() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

/// The payload from `--payload`, `--text` and `--size` (`default` when not given), checked
/// against its smallest; `sender` names whose id the stamp carries.
fn payload(
    payload: Payload,
    text: bool,
    size: Option<usize>,
    default: usize,
    sender: &str,
) -> Result<(Encoding, usize), LoadError> {
    let (encoding, size, what) = match payload {
        Payload::Json => (
            Encoding::Json,
            size.unwrap_or(tick::DEFAULT_BYTES),
            "a JSON tick with its stamp and no book".to_owned(),
        ),
        Payload::Pattern => (
            if text {
                Encoding::Text
            } else {
                Encoding::Binary
            },
            size.unwrap_or(default),
            format!("the stamp ({sender} id, sequence number, send time)"),
        ),
    };
    size_in_range(size, encoding.min_bytes(), &what)?;
    Ok((encoding, size))
}

/// With `--protocol socketio`, `--payload-at` or `--publish-template` the payload travels as a
/// JSON string: it must be text.
fn session_needs_text(t: &TrafficArgs) -> bool {
    t.session.protocol == ProtocolArg::Socketio
        || t.payload_at.is_some()
        || t.publish_template.is_some()
}

/// The protocol over WebSocket from its flags, its files read; `None` for plain WebSocket.
/// `emit` is the Socket.IO event data messages go as.
fn session_spec(
    args: &SessionArgs,
    payload_at: Option<&str>,
    template: Option<&Path>,
    target: &target::Target,
    emit: &str,
) -> Result<Option<Arc<session::Spec>>, LoadError> {
    let protocol = match args.protocol {
        ProtocolArg::Websocket => session::Protocol::WebSocket,
        ProtocolArg::Socketio => session::Protocol::SocketIo,
    };
    if protocol == session::Protocol::WebSocket
        && args.on_open.is_none()
        && args.ready_when.is_none()
        && payload_at.is_none()
        && template.is_none()
    {
        return Ok(None);
    }
    let read = |flag: &str, path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| LoadError::Usage(format!("{flag} {}: {e}", path.display())))
    };
    let on_open = args
        .on_open
        .as_deref()
        .map(|p| read("--on-open", p))
        .transpose()?;
    let template = template
        .map(|p| read("--publish-template", p))
        .transpose()?;
    // The topic as rooms by path name it: the path without its / and query.
    let topic = target.path.split('?').next().unwrap_or_default();
    let topic = topic.strip_prefix('/').unwrap_or(topic);
    session::Spec::new(
        protocol,
        on_open.as_deref(),
        args.ready_when.as_deref(),
        payload_at,
        template.as_deref(),
        topic,
        emit,
    )
    .map(|spec| Some(Arc::new(spec)))
    .map_err(|e| LoadError::Usage(e.to_string()))
}

/// `--source`'s addresses (none: the kernel picks): addresses of this machine, of the target's
/// family. A target named by a DNS name takes its first address of their family first.
fn parse_sources(
    spec: Option<&str>,
    target: &mut target::Target,
) -> Result<Vec<IpAddr>, LoadError> {
    if let Some(first) = spec
        .and_then(|spec| source::parse_addresses(spec).ok())
        .and_then(|list| list.first().copied())
    {
        target.prefer_family_of(first);
    }
    let sources = addresses("--source", spec, target)?;
    endpoints::check_local(&sources)?;
    Ok(sources)
}

/// `--target-addresses` with the URL's port (none given: the URL's own address).
fn parse_targets(
    spec: Option<&str>,
    target: &target::Target,
) -> Result<Vec<SocketAddr>, LoadError> {
    let ips = addresses("--target-addresses", spec, target)?;
    if ips.is_empty() {
        return Ok(vec![target.addr]);
    }
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, target.addr.port()))
        .collect())
}

/// An address list of `flag`, each of the family of the URL's address.
fn addresses(
    flag: &'static str,
    spec: Option<&str>,
    target: &target::Target,
) -> Result<Vec<IpAddr>, LoadError> {
    let list = match spec {
        Some(spec) => {
            source::parse_addresses(spec).map_err(|source| LoadError::Addresses { flag, source })?
        }
        None => Vec::new(),
    };
    if list.iter().any(|a| a.is_ipv4() != target.addr.is_ipv4()) {
        return Err(LoadError::Usage(format!(
            "{flag} addresses must be of the same family as the target {}",
            target.addr.ip()
        )));
    }
    Ok(list)
}

/// Before any thread starts: the server to measure can be read, and `connections` are within
/// what `threads` rings and the source addresses can hold (raising `RLIMIT_NOFILE` to its hard
/// limit first). Prints the capacity, and warns when a source address is crowded enough for
/// the kernel's port search to slow the ramp.
fn check_reach(
    server_pid: Option<u32>,
    threads: usize,
    sources: &[IpAddr],
    targets: usize,
    features: ClientFeatures,
    connections: u64,
) -> Result<Capacity, LoadError> {
    if let Some(pid) = server_pid {
        procfs::ProcessSample::read(pid).map_err(|source| LoadError::ServerPid { pid, source })?;
    }
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
        targets: targets.max(1) as u64,
        // Without IP_BIND_ADDRESS_NO_PORT a bind() takes its port from every target at once.
        ports_by_pair: sources.is_empty() || features.bind_no_port,
        bind_no_port: features.bind_no_port,
        ports_per_source: limits.ports_per_source(),
    };
    println!(
        "capacity: {capacity} (RLIMIT_NOFILE {soft}/{hard}, ports {}-{})",
        limits.port_range.0, limits.port_range.1
    );
    capacity.check(connections)?;
    if let Some(per_source) = capacity.crowded_sources(connections) {
        eprintln!(
            "uringcast-load: warning: {per_source} connections per (source, target) address \
             pair is past half of its {} ephemeral ports, where the kernel's connect() port \
             search slows down; add --source or --target-addresses to keep each below {}",
            capacity.ports_per_source,
            capacity.ports_per_source / 2
        );
    }
    Ok(capacity)
}
