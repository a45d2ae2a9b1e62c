//! The command line: every scenario's flags (clap), and the bounds every value is checked
//! against before a run starts.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::error::LoadError;
use crate::scenario::{broadcast, connect, echo, traffic};
use crate::tls;

/// A load generator for WebSocket servers, on io_uring.
#[derive(Parser, Debug)]
#[command(name = "uringcast-load", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Scenario {
    /// Open N WebSocket connections at a steady rate, hold them idle, then close them;
    /// reports handshake latency and, with --server-pid, the server's memory and CPU cost.
    Connect(ConnectArgs),
    /// Send messages on C connections and check every echo byte for byte: closed loop with
    /// --inflight P per connection, or open loop at --rate R messages/s in total.
    Echo(EchoArgs),
    /// N subscribers on a topic, K publishers sending R messages/s in total (over WebSocket,
    /// or HTTP with --publish-url), or keeping --inflight P publishes in flight in all;
    /// every delivery checked for loss, order and content.
    Broadcast(BroadcastArgs),
    /// N subscribers each holding a Server-Sent Events stream of a topic (http:// or
    /// https://), K publishers as in broadcast; every event checked by its id (EPOCH:OFFSET)
    /// and its payload, and with --reconnect-after every stream resumed once.
    Sse(SseArgs),
    /// Combine the --json reports of several runs of one scenario (processes or machines run
    /// together, see --start-at) into one report: counts summed, latency histograms added.
    Merge(MergeArgs),
    /// Draw a comparison chart to SVG: latency-by-percentile curves from several --json
    /// reports (`plot latency`), or lines from a series,x,y CSV (`plot lines`).
    Plot(PlotArgs),
    /// A Pusher Channels server (protocol 7): N subscribers over --channels C channels
    /// (public, --private or --presence, signed with the app's secret as its backend would),
    /// K publishers triggering through the signed HTTP API (or --client-events); every
    /// delivery checked for loss, duplicates, order and content.
    Pusher(PusherArgs),
}

/// `pusher`'s flags.
#[derive(Args, Debug)]
// The help text names URL parts in brackets, which rustdoc would take for links.
#[allow(rustdoc::broken_intra_doc_links)]
pub(crate) struct PusherArgs {
    /// ws:// or wss://HOST[:PORT]: the server; connections go to /app/KEY?protocol=7.
    pub(crate) url: String,
    /// The app's key (clients connect with it).
    #[arg(long)]
    pub(crate) app_key: String,
    /// The app's secret: signs private and presence subscriptions and API requests (never
    /// printed).
    #[arg(long)]
    pub(crate) app_secret: String,
    /// The app's id, in the HTTP API's paths (/apps/ID/events).
    #[arg(long)]
    pub(crate) app_id: String,
    /// Channels the subscribers spread over (connection n joins channel n mod C); each
    /// trigger names them all (at most 100).
    #[arg(long, default_value_t = 1)]
    pub(crate) channels: u64,
    /// Private channels (private-NAME), each subscription signed.
    #[arg(long, conflicts_with = "presence")]
    pub(crate) private: bool,
    /// Presence channels (presence-NAME), each subscription signed with its member (one
    /// user per connection; servers cap members per channel, 100 by default).
    #[arg(long)]
    pub(crate) presence: bool,
    /// The channels' base name: channels are [private-|presence-]NAME-0 .. NAME-(C-1).
    #[arg(long, default_value = "load")]
    pub(crate) channel_name: String,
    /// Subscribers.
    #[arg(long, default_value_t = broadcast::DEFAULT_SUBSCRIBERS)]
    pub(crate) subscribers: u64,
    /// Publishers: HTTP API clients, or with --client-events WebSocket connections.
    #[arg(long, default_value_t = broadcast::DEFAULT_PUBLISHERS)]
    pub(crate) publishers: u64,
    /// Events triggered per second over all publishers [default: 10].
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Payload bytes per event [default: 64].
    #[arg(long)]
    pub(crate) size: Option<usize>,
    /// The HTTP API's base (http://HOST:PORT) [default: the URL's host and port, over
    /// http://].
    #[arg(long, conflicts_with = "client_events")]
    pub(crate) publish_url: Option<String>,
    /// Publish client events (client-NAME) from WebSocket publishers subscribed to the
    /// channel, instead of HTTP triggers: needs --private or --presence and one channel
    /// (servers rate-limit client events per connection, 10/s by default).
    #[arg(long)]
    pub(crate) client_events: bool,
    /// The event name [default: load, or client-load with --client-events].
    #[arg(long)]
    pub(crate) event: Option<String>,
    /// Presence churn: R members a second join the first channel (each a new connection,
    /// signed like the subscribers) and leave again at once, beside the traffic (needs
    /// --presence).
    #[arg(long, value_name = "R", requires = "presence")]
    pub(crate) churn: Option<f64>,
    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,
}

/// `plot`'s charts.
#[derive(Args, Debug)]
pub(crate) struct PlotArgs {
    #[command(subcommand)]
    pub(crate) kind: PlotKind,
}

#[derive(Subcommand, Debug)]
pub(crate) enum PlotKind {
    /// One latency-by-percentile curve per NAME=REPORT.json, from the report's lossless
    /// histogram, on one chart (x: percentile on a 1/(1-p) log scale, y: ms), with a legend.
    Latency(PlotLatencyArgs),
    /// One line with point markers per series of a CSV with the header `series,x,y` (rows of
    /// a series in any order; series in order of first appearance), with a legend.
    Lines(PlotLinesArgs),
}

/// `plot latency`'s flags.
#[derive(Args, Debug)]
pub(crate) struct PlotLatencyArgs {
    /// The SVG file to write (its name must end in .svg).
    #[arg(value_name = "OUT.svg")]
    pub(crate) out: PathBuf,
    /// A curve: its legend name, =, a --json report of `echo`, `broadcast`, `connect` or
    /// `merge`.
    #[arg(value_name = "NAME=REPORT.json", required = true)]
    pub(crate) curves: Vec<String>,
    /// The chart's title.
    #[arg(long, default_value = "latency by percentile")]
    pub(crate) title: String,
    /// The report's histogram to draw (a key of its `histograms`): `latency_us` is the
    /// delivery or echo latency, or `connect`'s handshake; also `handshake_latency_us`,
    /// `connect_latency_us`, `tls_handshake_latency_us`, `close_latency_us`.
    #[arg(long, value_name = "KEY", default_value = "latency_us")]
    pub(crate) histogram: String,
}

/// `plot lines`' flags.
#[derive(Args, Debug)]
pub(crate) struct PlotLinesArgs {
    /// The SVG file to write (its name must end in .svg).
    #[arg(value_name = "OUT.svg")]
    pub(crate) out: PathBuf,
    /// The data: a header `series,x,y`, then one row per point (no quoting: a name holds no
    /// comma).
    #[arg(long, value_name = "DATA.csv")]
    pub(crate) csv: PathBuf,
    /// The chart's title [default: none].
    #[arg(long, default_value = "")]
    pub(crate) title: String,
    /// The x axis's description.
    #[arg(long, value_name = "X", default_value = "x")]
    pub(crate) x_label: String,
    /// The y axis's description.
    #[arg(long, value_name = "Y", default_value = "y")]
    pub(crate) y_label: String,
    /// A log x axis (every x must be above 0).
    #[arg(long)]
    pub(crate) log_x: bool,
    /// The y axis includes 0.
    #[arg(long)]
    pub(crate) y_from_zero: bool,
}

/// `merge`'s flags.
#[derive(Args, Debug)]
pub(crate) struct MergeArgs {
    /// The --json reports to combine, all of the same scenario and settings.
    #[arg(required = true)]
    pub(crate) reports: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

/// The files a report can also be written to, for a run and for a merge of runs.
#[derive(Args, Debug)]
pub(crate) struct OutputArgs {
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Also write the latency histogram as HdrHistogram percentile text (.hgrm, in ms).
    #[arg(long)]
    pub(crate) hdr: Option<PathBuf>,
    /// Also draw the latency-by-percentile curve to this SVG file.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
}

impl OutputArgs {
    /// The files, for `output::emit`.
    pub(crate) fn files(&self) -> crate::output::Files<'_> {
        crate::output::Files {
            json: self.json.as_deref(),
            hdr: self.hdr.as_deref(),
            plot: self.plot.as_deref(),
        }
    }
}

/// Flags of every message scenario.
#[derive(Args, Debug)]
pub(crate) struct TrafficArgs {
    /// Seconds of traffic (after every connection is up).
    #[arg(long)]
    pub(crate) duration: Option<f64>,
    /// Start the traffic at this wall-clock time (seconds since the Unix epoch, e.g.
    /// $(($(date +%s)+5))), once every connection is up, so that several processes start
    /// together; a time already past, before or after connecting, is refused (exit 2).
    #[arg(long, value_name = "UNIX_TIME")]
    pub(crate) start_at: Option<f64>,
    /// Client threads, each with its own ring, pinned round-robin to the CPUs the process may use (taskset narrows them).
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Source addresses of this machine, round-robin: a range 127.0.0.2-127.0.0.40, a comma
    /// list, or both [default: the kernel picks].
    #[arg(long)]
    pub(crate) source: Option<String>,
    /// Server addresses to connect to instead of the URL's (same port, Host and path),
    /// round-robin: a range 127.0.0.1-127.0.0.4, a comma list, or both. Each (source, target)
    /// pair has its own ephemeral ports [default: the URL's address].
    #[arg(long)]
    pub(crate) target_addresses: Option<String>,
    /// New connections per second while connecting, over all threads.
    #[arg(long, default_value_t = traffic::DEFAULT_CONNECT_RATE)]
    pub(crate) connect_rate: f64,
    /// Seconds for a connection to reach a verified 101.
    #[arg(long, default_value_t = connect::DEFAULT_HANDSHAKE_TIMEOUT_SECS)]
    pub(crate) handshake_timeout: f64,
    /// Seconds to wait, after sending stops, for messages still in flight.
    #[arg(long, default_value_t = traffic::DEFAULT_DRAIN_TIMEOUT_SECS)]
    pub(crate) drain_timeout: f64,
    /// Seconds for the closing handshakes at the end.
    #[arg(long, default_value_t = connect::DEFAULT_CLOSE_TIMEOUT_SECS)]
    pub(crate) close_timeout: f64,
    /// The server's pid: report its CPU time and RSS from /proc.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
    /// No progress line on stderr.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// What each message carries besides its stamp: `pattern`, an a..z filler (binary, or hex
    /// with --text); `json`, a market-data tick in a text message, as compressible as a real
    /// feed's (see --deflate).
    #[arg(long, value_enum, default_value_t = Payload::Pattern)]
    pub(crate) payload: Payload,
    /// Offer permessage-deflate (RFC 7692) on every connection and inflate what arrives
    /// compressed; the report gives the connections that agreed, and the bytes on the wire
    /// against the payload.
    #[arg(long)]
    pub(crate) deflate: bool,
    /// With --deflate: compress what is sent too, on connections that agreed (messages of 128
    /// bytes or more, when that makes them smaller) [default: sent plain, as RFC 7692 allows].
    #[arg(long, requires = "deflate")]
    pub(crate) deflate_send: bool,
    #[command(flatten)]
    pub(crate) tls: tls::TlsArgs,
    #[command(flatten)]
    pub(crate) session: SessionArgs,
    /// Where the payload sits in a received JSON message (a JSON pointer to a string, e.g.
    /// /data); other messages are the protocol's own and not counted. WebSocket publishers
    /// send it there too (see --publish-template) [default: each message is a payload;
    /// /1 with --protocol socketio, the event's first argument].
    #[arg(long, value_name = "POINTER")]
    pub(crate) payload_at: Option<String>,
    /// What a data message is: a JSON message with {payload} where the payload goes as a JSON
    /// string ({topic} and {conn} substituted) [default: the smallest object with the payload
    /// at --payload-at].
    #[arg(long, value_name = "FILE")]
    pub(crate) publish_template: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) reconnect: ReconnectArgs,
}

/// `--reconnect` and its bounds, for every scenario.
#[derive(Args, Debug)]
pub(crate) struct ReconnectArgs {
    /// On a connection's close or error (refused, reset, timed out, closed by the server),
    /// open it again after an exponential backoff with jitter (0.1 s doubling to 5 s, a random
    /// half of it), as real clients do; the report gives reconnects, the peak handshake rate
    /// and how many gave up.
    #[arg(long)]
    pub(crate) reconnect: bool,
    /// With --reconnect: attempts per loss before giving up on the connection.
    #[arg(long, value_name = "N", requires = "reconnect",
          default_value_t = traffic::DEFAULT_MAX_ATTEMPTS)]
    pub(crate) reconnect_max: u32,
    /// With --reconnect: seconds after a loss after which no new attempt starts.
    #[arg(long, value_name = "SECS", requires = "reconnect",
          default_value_t = traffic::DEFAULT_GIVE_UP_SECS)]
    pub(crate) reconnect_timeout: f64,
}

impl ReconnectArgs {
    /// The engine's policy, `None` without `--reconnect`.
    pub(crate) fn policy(&self) -> Result<Option<traffic::Policy>, LoadError> {
        if !self.reconnect {
            return Ok(None);
        }
        range(
            "--reconnect-max",
            f64::from(self.reconnect_max),
            1.0,
            1000.0,
        )?;
        let give_up_after = seconds(
            "--reconnect-timeout",
            self.reconnect_timeout,
            0.001,
            MAX_HOLD_SECS,
        )?;
        Ok(Some(traffic::Policy {
            base: traffic::DEFAULT_BACKOFF_BASE,
            cap: traffic::DEFAULT_BACKOFF_CAP,
            max_attempts: self.reconnect_max,
            give_up_after,
        }))
    }

    /// The report's settings.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "reconnect": self.reconnect,
            "reconnect_max": self.reconnect.then_some(self.reconnect_max),
            "reconnect_timeout_s": self.reconnect.then_some(self.reconnect_timeout),
        })
    }
}

/// `sse`'s flags.
#[derive(Args, Debug)]
// The help text names URL parts in brackets, which rustdoc would take for links.
#[allow(rustdoc::broken_intra_doc_links)]
pub(crate) struct SseArgs {
    /// http:// or https://HOST[:PORT][/PATH]: the topic's event stream; HOST is an IPv4
    /// address, [IPv6], or a DNS name.
    pub(crate) url: String,
    /// Streams (subscribers) on the topic.
    #[arg(long, default_value_t = broadcast::DEFAULT_SUBSCRIBERS)]
    pub(crate) subscribers: u64,
    /// The topic's path, replacing the URL's [default: the URL's path].
    #[arg(long)]
    pub(crate) path: Option<String>,
    /// Messages published per second over all publishers, on a fixed schedule.
    #[arg(long, default_value_t = broadcast::DEFAULT_RATE)]
    pub(crate) rate: f64,
    /// Payload bytes per message (at least 24; 192 with --payload json) [default: 64; 400
    /// with --payload json]. The default pattern payload is binary: it arrives as
    /// `event: binary` in base64; --payload json arrives as text.
    #[arg(long)]
    pub(crate) size: Option<usize>,
    /// Publishers: WebSocket connections to the same host and topic (ws://, or wss:// for
    /// https://), or HTTP clients with --publish-url; 0: someone else publishes.
    #[arg(long, default_value_t = broadcast::DEFAULT_PUBLISHERS)]
    pub(crate) publishers: u64,
    /// Publish with HTTP POST to this URL (http://127.0.0.1:PORT/publish/TOPIC) instead of
    /// WebSocket connections.
    #[arg(long)]
    pub(crate) publish_url: Option<String>,
    /// Bearer token for --publish-url.
    #[arg(long, requires = "publish_url")]
    pub(crate) publish_token: Option<String>,
    /// Each stream closes once, at a random time from SECS to 1.5 x SECS after the traffic
    /// starts, and opens again with Last-Event-ID; the report counts exact recoveries,
    /// resets and silent losses.
    #[arg(long, value_name = "SECS")]
    pub(crate) reconnect_after: Option<f64>,
    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,
}

/// The protocol spoken over WebSocket, for every scenario.
#[derive(Args, Debug)]
pub(crate) struct SessionArgs {
    /// What the connections speak over WebSocket: `websocket`, messages as they are (or JSON
    /// around them, --payload-at); `socketio`, Socket.IO v5 over Engine.IO v4 (URL path
    /// /socket.io/?EIO=4&transport=websocket).
    #[arg(long, value_enum, default_value_t = ProtocolArg::Websocket)]
    pub(crate) protocol: ProtocolArg,
    /// Messages each connection sends once up (after the upgrade, or Socket.IO's connect), one
    /// per line, with {conn} (its number in the run) and {topic} (the path without its /)
    /// substituted: a subscribe message.
    #[arg(long, value_name = "FILE")]
    pub(crate) on_open: Option<PathBuf>,
    /// POINTER=VALUE: a connection counts as up (subscribed) only once a JSON message holds
    /// VALUE (JSON, or else a string) at the JSON pointer, e.g. /type=subscribed; traffic
    /// waits for every connection, within --handshake-timeout.
    #[arg(long, value_name = "POINTER=VALUE")]
    pub(crate) ready_when: Option<String>,
}

/// `--protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProtocolArg {
    /// Plain WebSocket messages.
    Websocket,
    /// Socket.IO v5 over Engine.IO v4's WebSocket transport.
    Socketio,
}

impl ProtocolArg {
    /// The JSON report's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Websocket => "websocket",
            Self::Socketio => "socketio",
        }
    }
}

/// `--payload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Payload {
    /// The stamp, then `a..z` repeated.
    Pattern,
    /// A JSON tick: the stamp's numbers, a symbol, prices and a book, exactly --size bytes.
    Json,
}

impl Payload {
    /// The JSON report's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Pattern => "pattern",
            Self::Json => "json",
        }
    }
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("encoding").args(["text", "binary"])))]
#[command(group(ArgGroup::new("pace").args(["inflight", "rate"])))]
// The help text names URL parts in brackets, which rustdoc would take for links.
#[allow(rustdoc::broken_intra_doc_links)]
pub(crate) struct EchoArgs {
    /// ws:// or wss://HOST[:PORT][/PATH]; HOST is an IPv4 address, [IPv6], or a DNS name.
    pub(crate) url: String,
    /// Connections.
    #[arg(long, default_value_t = echo::DEFAULT_CONNECTIONS)]
    pub(crate) connections: u64,
    /// Payload bytes per message (at least 24 binary, 48 text: the stamp; 192 with
    /// --payload json) [default: 64; 400 with --payload json].
    #[arg(long)]
    pub(crate) size: Option<usize>,
    /// Text messages (the payload is ASCII).
    #[arg(long)]
    pub(crate) text: bool,
    /// Binary messages [the default].
    #[arg(long)]
    pub(crate) binary: bool,
    /// Closed loop: messages in flight per connection [default: 1].
    #[arg(long)]
    pub(crate) inflight: Option<u32>,
    /// Open loop: messages per second over all connections, on a fixed schedule.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("pace").args(["inflight", "rate"])))]
// The help text names URL parts in brackets, which rustdoc would take for links.
#[allow(rustdoc::broken_intra_doc_links)]
pub(crate) struct BroadcastArgs {
    /// ws:// or wss://HOST[:PORT][/PATH]; HOST is an IPv4 address, [IPv6], or a DNS name.
    pub(crate) url: String,
    /// Subscribers on the topic.
    #[arg(long, default_value_t = broadcast::DEFAULT_SUBSCRIBERS)]
    pub(crate) subscribers: u64,
    /// The topic's path, replacing the URL's [default: the URL's path].
    #[arg(long)]
    pub(crate) path: Option<String>,
    /// Open loop: messages published per second over all publishers, on a fixed schedule
    /// [default: 10].
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Closed loop: publishes in flight over all WebSocket publishers (at least one each);
    /// a publisher sends its next as soon as one has reached every open subscriber.
    #[arg(long)]
    pub(crate) inflight: Option<u32>,
    /// With --inflight: seconds before a publish that has not reached every open subscriber
    /// is given up on (its slot freed; what never arrived still counts as missing).
    #[arg(long, value_name = "SECS", requires = "inflight",
          default_value_t = broadcast::DEFAULT_PUBLISH_TIMEOUT_SECS)]
    pub(crate) publish_timeout: f64,
    /// Payload bytes per message (at least 24: publisher id, sequence number, send time; 192
    /// with --payload json) [default: 64; 400 with --payload json].
    #[arg(long)]
    pub(crate) size: Option<usize>,
    /// Publishers; 0: someone else publishes (each subscriber then expects every sequence
    /// number between the first and last it saw).
    #[arg(long, default_value_t = broadcast::DEFAULT_PUBLISHERS)]
    pub(crate) publishers: u64,
    /// Publish with HTTP POST to this URL (http://127.0.0.1:PORT/publish/TOPIC) instead of
    /// WebSocket connections.
    #[arg(long)]
    pub(crate) publish_url: Option<String>,
    /// The WebSocket publishers connect to this URL, another node of the cluster
    /// (ws://HOST:PORT[/PATH], or wss:// when the URL is), rather than to the subscribers'
    /// address(es). Its path defaults to the subscribers' topic; it may be the topic's
    /// publish-only path /publish/TOPIC (joins nothing, so the publishers do not receive their
    /// own messages); a different topic is refused. The report then gives delivery latency per
    /// subscriber address.
    #[arg(long, value_name = "URL", conflicts_with = "publish_url")]
    pub(crate) publisher_url: Option<String>,
    /// Bearer token for --publish-url.
    #[arg(long, requires = "publish_url")]
    pub(crate) publish_token: Option<String>,
    /// With --publishers 0: the outside publisher sends N messages (publisher id 0, sequence
    /// numbers 0 to N-1, as another uringcast-load process with one publisher does). Every
    /// subscriber is then owed all N: the drain waits for them (up to --drain-timeout) and
    /// `missing` counts what did not arrive, rather than the gaps between what did.
    #[arg(long, value_name = "N")]
    pub(crate) expect: Option<u64>,
    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,
}

#[derive(Args, Debug)]
// The help text names URL parts in brackets, which rustdoc would take for links.
#[allow(rustdoc::broken_intra_doc_links)]
pub(crate) struct ConnectArgs {
    /// ws:// or wss://HOST[:PORT][/PATH]; HOST is an IPv4 address, [IPv6], or a DNS name.
    pub(crate) url: String,
    /// Connections to open and hold.
    #[arg(long, default_value_t = connect::DEFAULT_CONNECTIONS)]
    pub(crate) connections: u64,
    /// New connections per second during the ramp, over all threads.
    #[arg(long, default_value_t = connect::DEFAULT_RATE)]
    pub(crate) rate: f64,
    /// Seconds to hold the connections after the ramp.
    #[arg(long, default_value_t = connect::DEFAULT_HOLD_SECS)]
    pub(crate) duration: f64,
    /// Client threads, each with its own ring and direct descriptor table, pinned round-robin to the CPUs the process may use.
    #[arg(long, default_value_t = connect::DEFAULT_THREADS)]
    pub(crate) threads: usize,
    /// Source addresses of this machine, round-robin: a range 127.0.0.2-127.0.0.40, a comma
    /// list, or both [default: the kernel picks].
    #[arg(long)]
    pub(crate) source: Option<String>,
    /// Server addresses to connect to instead of the URL's (same port, Host and path),
    /// round-robin: a range 127.0.0.1-127.0.0.4, a comma list, or both. Each (source, target)
    /// pair has its own ephemeral ports [default: the URL's address].
    #[arg(long)]
    pub(crate) target_addresses: Option<String>,
    /// Seconds for a connection to reach a verified 101.
    #[arg(long, default_value_t = connect::DEFAULT_HANDSHAKE_TIMEOUT_SECS)]
    pub(crate) handshake_timeout: f64,
    /// Seconds for the closing handshake at the end.
    #[arg(long, default_value_t = connect::DEFAULT_CLOSE_TIMEOUT_SECS)]
    pub(crate) close_timeout: f64,
    /// The server's pid: report its RSS and CPU time from /proc.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Offer permessage-deflate (RFC 7692) on every connection; the report gives how many
    /// agreed.
    #[arg(long)]
    pub(crate) deflate: bool,
    #[command(flatten)]
    pub(crate) tls: tls::TlsArgs,
    #[command(flatten)]
    pub(crate) session: SessionArgs,
    #[command(flatten)]
    pub(crate) reconnect: ReconnectArgs,
    /// Halfway through the hold, every K-th connection sends one message and must get it back
    /// (from an echo server): the held connections are alive. 0: none.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub(crate) echo_sample: u64,
}

/// Upper bounds that keep a run bounded: a typo must not become a week-long run.
pub(crate) const MAX_CONNECTIONS: u64 = 10_000_000;
pub(crate) const MAX_THREADS: usize = 256;
pub(crate) const MAX_RATE: f64 = 1_000_000.0;
pub(crate) const MAX_HOLD_SECS: f64 = 86_400.0;
pub(crate) const MAX_TIMEOUT_SECS: f64 = 600.0;

/// The largest message: far above any broadcast payload, and what a client accepts.
pub(crate) const MAX_SIZE: usize = 16 << 20;
pub(crate) const MAX_MESSAGE_RATE: f64 = 100_000_000.0;
pub(crate) const MAX_INFLIGHT: u32 = 100_000;

pub(crate) fn size_in_range(size: usize, min: usize, what: &str) -> Result<(), LoadError> {
    if (min..=MAX_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(LoadError::Usage(format!(
            "--size {size} is out of range: at least {min} bytes for {what}, at most {MAX_SIZE}"
        )))
    }
}

pub(crate) fn positive(flag: &str, value: f64, max: f64) -> Result<(), LoadError> {
    if value.is_finite() && value > 0.0 && value <= max {
        Ok(())
    } else {
        Err(LoadError::Usage(format!(
            "{flag} {value} is out of range (more than 0, at most {max})"
        )))
    }
}

pub(crate) fn range(flag: &str, value: f64, min: f64, max: f64) -> Result<(), LoadError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(LoadError::Usage(format!(
            "{flag} {value} is out of range (at least {min}, at most {max})"
        )))
    }
}

/// `--inflight` (echo and broadcast): 1 to [`MAX_INFLIGHT`].
pub(crate) fn inflight_in_range(inflight: u32) -> Result<(), LoadError> {
    range(
        "--inflight",
        f64::from(inflight),
        1.0,
        f64::from(MAX_INFLIGHT),
    )
}

pub(crate) fn seconds(flag: &str, value: f64, min: f64, max: f64) -> Result<Duration, LoadError> {
    range(flag, value, min, max)?;
    Ok(Duration::from_secs_f64(value))
}
