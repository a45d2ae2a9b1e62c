//! The `uringcast` command: a WebSocket server on io_uring.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;
use uringcast::auth::ClientPublish;
use uringcast::config::{self, Mode, SlowConsumer};
use uringcast::protocol::origin::AllowedOrigins;
use uringcast::server::{self, Server};

/// A WebSocket (RFC 6455) server for Linux on io_uring.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on (every worker listens on it with SO_REUSEPORT).
    #[arg(long, default_value = config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// What to do with messages.
    #[arg(long, value_enum, default_value_t = CliMode::Echo)]
    mode: CliMode,
    /// Worker threads, each pinned to a CPU with its own ring [default: one per CPU].
    #[arg(long)]
    workers: Option<usize>,
    /// Largest message in bytes, summed across fragments; larger ones are closed with 1009.
    #[arg(long, default_value_t = config::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: u64,
    /// Bytes one worker may allocate for unfinished messages, request bodies and TLS records,
    /// summed over its connections; a connection whose next bytes do not fit is closed with
    /// 1013 (a request body gets 503).
    #[arg(long, default_value_t = config::DEFAULT_MAX_PENDING_BYTES)]
    max_pending_bytes: u64,
    /// Submission queue entries per worker ring (a power of two, 8 to 16384).
    #[arg(long, default_value_t = config::DEFAULT_RING_ENTRIES)]
    ring_entries: u32,
    /// Receive buffers per worker (a power of two), shared by all its connections [default:
    /// 256, or fewer (at least 32) when workers outnumber CPUs: the CPUs' 256 each, shared]
    #[arg(long)]
    recv_buffers: Option<u16>,
    /// Bytes per receive buffer.
    #[arg(long, default_value_t = config::DEFAULT_RECV_BUFFER_BYTES)]
    recv_buffer_bytes: usize,
    /// Bytes of frames queued per connection; past it the connection is closed with 1008.
    #[arg(long, default_value_t = config::DEFAULT_MAX_BACKLOG_BYTES)]
    max_backlog_bytes: usize,
    /// Seconds a client has to complete its upgrade.
    #[arg(long, default_value_t = config::DEFAULT_HANDSHAKE_TIMEOUT.as_secs_f64())]
    handshake_timeout: f64,
    /// Seconds of silence before a ping; a ping unanswered for as long closes with 1001. 0 = off.
    #[arg(long, default_value_t = config::DEFAULT_PING_INTERVAL.as_secs_f64())]
    ping_interval: f64,
    /// Seconds to wait for peers' close frames at shutdown.
    #[arg(long, default_value_t = config::DEFAULT_DRAIN_TIMEOUT.as_secs_f64())]
    drain_timeout: f64,
    /// What to do with a subscriber whose queue passes --max-backlog-bytes.
    #[arg(long, value_enum, default_value_t = CliSlowConsumer::Disconnect)]
    slow_consumer: CliSlowConsumer,
    /// Enables POST /publish/<topic> for requests with `Authorization: Bearer TOKEN`
    /// (also read from the URINGCAST_PUBLISH_TOKEN environment variable).
    #[arg(long, env = "URINGCAST_PUBLISH_TOKEN", hide_env_values = true)]
    publish_token: Option<String>,
    /// Origins a WebSocket upgrade may come from, comma-separated: exact origins
    /// (`https://app.example.com`), subdomain patterns (`https://*.example.com`), `null`, or
    /// `*` for any. Any other Origin gets 403; requests without one (non-browser clients)
    /// are allowed.
    #[arg(long, default_value = "*", value_parser = AllowedOrigins::parse)]
    allowed_origins: AllowedOrigins,
    /// Hold connections as plain descriptors instead of direct ones (visible to `ss -p`;
    /// capacity then bounded by one RLIMIT_NOFILE for the whole process).
    #[arg(long)]
    plain_descriptors: bool,
    /// Speak TLS (wss://, https://) with this certificate chain (PEM, leaf first); needs
    /// --tls-key. SIGHUP reads both files again: new handshakes use the new pair.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key for --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1; ECDSA, RSA or Ed25519).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// Accept permessage-deflate (RFC 7692) from clients that offer it. A broadcast is
    /// compressed once per worker and shared; no connection keeps zlib state between
    /// messages.
    #[arg(long)]
    deflate: bool,
    /// With --deflate: messages shorter than this go uncompressed (so does any message that
    /// compression would not shrink).
    #[arg(long, default_value_t = config::DEFAULT_DEFLATE_MIN_BYTES, value_name = "BYTES")]
    deflate_min_bytes: usize,
    /// Spread topics over every node on this broker: redis://HOST:PORT[/DB],
    /// redis+cluster://HOST:PORT[,HOST:PORT...] (sharded pub/sub, Redis 7) or
    /// nats://HOST:PORT[,...] or kafka://HOST:PORT[,...] (needs --history; the Kafka topic is
    /// --broker-prefix). Unreachable at start: exit 2, unless --broker-optional.
    #[arg(long, value_name = "URL", env = "URINGCAST_BROKER")]
    broker: Option<String>,
    /// The first part of every broker channel name: PREFIX:TOPIC on Redis, PREFIX.TOPIC on
    /// NATS; on Kafka, the name of the one Kafka topic (created with 1 partition if missing).
    #[arg(long, default_value = uringcast::broker::DEFAULT_PREFIX, value_name = "PREFIX")]
    broker_prefix: String,
    /// Start local-only, with a warning, when the broker cannot be reached; the link keeps
    /// trying in the background.
    #[arg(long, requires = "broker")]
    broker_optional: bool,
    /// Publications kept per topic for recovery; 0 turns positions, history and recovery
    /// off. With it on, every publish gets a position EPOCH:OFFSET in its topic, SSE events
    /// carry it as their id, and a client that reconnects gets exactly what it missed or
    /// an explicit "not recovered".
    #[arg(long, default_value_t = config::DEFAULT_HISTORY, value_name = "N")]
    history: usize,
    /// Seconds a publication is kept for recovery.
    #[arg(long, default_value_t = config::DEFAULT_HISTORY_TTL.as_secs_f64(), value_name = "S")]
    history_ttl: f64,
    /// Bytes of publications kept on the node over all topics; past it the oldest go first.
    #[arg(long, default_value_t = config::DEFAULT_HISTORY_MAX_BYTES, value_name = "B")]
    history_max_bytes: usize,
    /// Publications replayed at most by one recovery; further behind is "not recovered".
    #[arg(long, default_value_t = config::DEFAULT_MAX_RECOVER, value_name = "N")]
    max_recover: usize,
    /// Do not serve Server-Sent Events (GET /<topic> with Accept: text/event-stream).
    #[arg(long)]
    no_sse: bool,
    /// With --mode pusher: the app's id, in the HTTP API's paths (/apps/ID/...).
    #[arg(long, value_name = "ID", conflicts_with = "apps")]
    app_id: Option<String>,
    /// With --mode pusher: the app's public key, which clients connect with (/app/KEY).
    #[arg(long, value_name = "KEY", conflicts_with = "apps")]
    app_key: Option<String>,
    /// With --mode pusher: the app's secret, which signs subscriptions and API requests
    /// (also read from the URINGCAST_APP_SECRET environment variable).
    #[arg(
        long,
        value_name = "SECRET",
        env = "URINGCAST_APP_SECRET",
        hide_env_values = true
    )]
    app_secret: Option<String>,
    /// With --mode pusher: several apps, with per-app limits, from a JSON file:
    /// {"apps": [{"id", "key", "secret", "limits": {...}}]}.
    #[arg(long, value_name = "FILE")]
    apps: Option<std::path::PathBuf>,
    /// With --mode pusher and --app-id: where the app's webhooks go (http://HOST:PORT/PATH),
    /// every event type; in --apps, each app has its own list.
    #[arg(long, value_name = "URL", conflicts_with = "apps")]
    app_webhook: Option<String>,
    /// Who may publish from a WebSocket: `all`, `none` (subscribers are read-only: a message
    /// closes the connection with 1008), or `token` (a JWT whose `publish` claim covers the
    /// topic). Default: `token` with a JWT key, `none` with only --publish-token, else `all`.
    #[arg(long, value_enum)]
    client_publish: Option<CliClientPublish>,
    /// Check tokens signed with HS256 and this secret (also read from URINGCAST_JWT_SECRET):
    /// every subscription then needs a JWT whose `subscribe` claim covers its topic.
    #[arg(
        long,
        env = "URINGCAST_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key"
    )]
    jwt_secret: Option<String>,
    /// Check tokens signed by this PEM public key's private half: RS256 (RSA), ES256
    /// (EC P-256) or EdDSA (Ed25519), chosen by the key.
    #[arg(long, value_name = "FILE")]
    jwt_public_key: Option<std::path::PathBuf>,
    /// Connections the server holds at once (WebSocket upgrades); past it, 503 with
    /// Retry-After [default: no cap but the file tables'].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Connections one client address (an IPv6 /64) holds at once, over all workers; past
    /// it, 429 with Retry-After [default: no cap].
    #[arg(long, value_name = "N")]
    max_connections_per_ip: Option<u32>,
    /// Upgrades one client address may start per second (burst: as many); past it, 429 with
    /// Retry-After [default: no cap].
    #[arg(long, value_name = "R")]
    max_handshakes_per_ip: Option<u32>,
    /// Messages one connection may send per second (burst: as many); past it, close 1008
    /// [default: no cap].
    #[arg(long, value_name = "R")]
    max_messages_per_second: Option<u32>,
    /// Payload bytes one connection may send per second (burst: one second's worth); past
    /// it, close 1008 [default: no cap].
    #[arg(long, value_name = "B")]
    max_bytes_per_second: Option<u64>,
    /// Peers (comma-separated addresses or CIDR blocks) whose Forwarded / X-Forwarded-For
    /// header names the client for the caps per address; from any other peer they are
    /// ignored.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    trusted_proxies: Vec<uringcast::limits::Cidr>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CliClientPublish {
    /// Any connection may publish to its topic.
    All,
    /// Subscribers may not publish; a message closes the connection with 1008.
    None,
    /// Only to the topics the connection's JWT `publish` claim covers.
    Token,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CliMode {
    /// Send every message back to its sender.
    Echo,
    /// The request path is the topic: subscribe to it, publish every message to it.
    Broadcast,
    /// Pusher Channels protocol 7: pusher-js, Laravel Echo and the Pusher server SDKs.
    Pusher,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CliSlowConsumer {
    /// Close it with 1008.
    Disconnect,
    /// Drop the messages it cannot take, and count them.
    Drop,
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

/// The log filter without `RUST_LOG`. The broker clients' own logs stay out of it: while a
/// broker is down they log every attempt, and the link reports the same errors rate-limited.
const DEFAULT_LOG: &str = "info,redis=off,async_nats=off,rskafka=off";

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    // A bad setting is a usage error, like clap's own: one line, exit 2.
    let apps = match pusher_apps(&cli) {
        Ok(apps) => apps,
        Err(error) => {
            eprintln!("uringcast: {error:#}");
            std::process::exit(2);
        }
    };
    let config = match settings(cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("uringcast: {error:#}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(config, apps) {
        eprintln!("uringcast: {error:#}");
        // An unreachable broker is a setting to fix, like a bad flag: exit 2.
        let broker = matches!(
            error.downcast_ref::<server::StartError>(),
            Some(server::StartError::Broker(_))
        );
        std::process::exit(if broker { 2 } else { 1 });
    }
}

/// The apps of `--mode pusher` (`None` in other modes, where the app flags are refused).
fn pusher_apps(cli: &Cli) -> anyhow::Result<Option<uringcast::pusher::app::Apps>> {
    use uringcast::pusher::app::{App, Apps};
    if !matches!(cli.mode, CliMode::Pusher) {
        if cli.app_id.is_some()
            || cli.app_key.is_some()
            || cli.apps.is_some()
            || cli.app_webhook.is_some()
        {
            anyhow::bail!("--app-id, --app-key, --app-webhook and --apps need --mode pusher");
        }
        return Ok(None);
    }
    let apps = match (&cli.apps, &cli.app_id, &cli.app_key, &cli.app_secret) {
        (Some(file), ..) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--apps: cannot read {}", file.display()))?;
            Apps::from_json(&text)?
        }
        (None, Some(id), Some(key), Some(secret)) => Apps::new(vec![App {
            id: id.clone(),
            key: key.clone(),
            secret: secret.clone(),
            limits: Default::default(),
            webhooks: cli
                .app_webhook
                .iter()
                .map(|url| uringcast::pusher::webhook::WebhookConfig {
                    url: url.clone(),
                    event_types: Vec::new(),
                })
                .collect(),
        }])?,
        _ => anyhow::bail!(
            "--mode pusher needs --app-id, --app-key and --app-secret (or URINGCAST_APP_SECRET), or --apps FILE"
        ),
    };
    Ok(Some(apps))
}

/// Turns the flags into a validated configuration.
fn settings(cli: Cli) -> anyhow::Result<config::Config> {
    let pusher = matches!(cli.mode, CliMode::Pusher);
    let mut builder = Server::builder()
        .listen(cli.listen)
        .mode(match cli.mode {
            CliMode::Echo => Mode::Echo,
            // Pusher runs on the broadcast engine with its own handler (see `run`).
            CliMode::Broadcast | CliMode::Pusher => Mode::Broadcast,
        })
        .slow_consumer(match cli.slow_consumer {
            CliSlowConsumer::Disconnect => SlowConsumer::Disconnect,
            CliSlowConsumer::Drop => SlowConsumer::Drop,
        })
        .publish_token(cli.publish_token)
        .allowed_origins(cli.allowed_origins)
        .max_message_bytes(cli.max_message_bytes)
        .max_backlog_bytes(cli.max_backlog_bytes)
        .max_pending_bytes(cli.max_pending_bytes)
        .ring_entries(cli.ring_entries)
        .recv_buffer_bytes(cli.recv_buffer_bytes)
        .handshake_timeout(seconds("handshake-timeout", cli.handshake_timeout)?)
        .ping_interval(Some(seconds("ping-interval", cli.ping_interval)?))
        .drain_timeout(seconds("drain-timeout", cli.drain_timeout)?)
        .direct_descriptors(!cli.plain_descriptors)
        .deflate(cli.deflate)
        .deflate_min_bytes(cli.deflate_min_bytes)
        .history(cli.history)
        .history_ttl(seconds("history-ttl", cli.history_ttl)?)
        .history_max_bytes(cli.history_max_bytes)
        .max_recover(cli.max_recover)
        // Server-Sent Events read any topic unauthenticated: never a Pusher app's channels.
        .sse(!cli.no_sse && !pusher)
        .handle_signals(true);
    if let Some(workers) = cli.workers {
        builder = builder.workers(workers);
    }
    if let Some(count) = cli.recv_buffers {
        builder = builder.recv_buffers(count, cli.recv_buffer_bytes);
    }
    if pusher {
        // Topics are `APP_ID:CHANNEL`: a 100-byte id and a 200-byte channel name.
        builder = builder.max_topic_bytes(uringcast::pusher::MAX_TOPIC_BYTES);
    }
    if let (Some(cert), Some(key)) = (cli.tls_cert, cli.tls_key) {
        builder = builder.tls(cert, key);
    }
    if let Some(who) = cli.client_publish {
        builder = builder.client_publish(match who {
            CliClientPublish::All => ClientPublish::All,
            CliClientPublish::None => ClientPublish::None,
            CliClientPublish::Token => ClientPublish::Token,
        });
    }
    if let Some(secret) = cli.jwt_secret {
        builder = builder.jwt_secret(secret);
    }
    if let Some(path) = cli.jwt_public_key {
        builder = builder.jwt_public_key(path);
    }
    builder = builder
        .max_connections(cli.max_connections)
        .max_connections_per_ip(cli.max_connections_per_ip)
        .max_handshakes_per_ip(cli.max_handshakes_per_ip)
        .max_messages_per_second(cli.max_messages_per_second)
        .max_bytes_per_second(cli.max_bytes_per_second)
        .trusted_proxies(cli.trusted_proxies);
    if let Some(url) = cli.broker {
        builder = builder
            .broker(url)
            .broker_prefix(cli.broker_prefix)
            .broker_optional(cli.broker_optional);
    }
    Ok(builder.build()?)
}

fn run(config: config::Config, apps: Option<uringcast::pusher::app::Apps>) -> anyhow::Result<()> {
    let handle = match apps {
        Some(apps) => server::spawn_with(config, uringcast::pusher::Pusher::new(apps))?,
        None => server::spawn(config)?,
    };
    // The one line on stdout: scripts and tests wait for it.
    println!("listening on {}", handle.local_addr());
    std::io::stdout().flush()?;
    handle.wait();
    Ok(())
}
