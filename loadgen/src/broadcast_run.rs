//! `uringcast-load broadcast`: its flags checked, its run set up and started, its report.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::cli::{
    inflight_in_range, positive, range, seconds, BroadcastArgs, MAX_CONNECTIONS, MAX_MESSAGE_RATE,
    MAX_TIMEOUT_SECS,
};
use crate::error::LoadError;
use crate::report::{Loop, TrafficReport};
use crate::scenario::broadcast::{
    self, BroadcastWork, ClosedLoop, HttpSenders, Nodes, Pace, PublishUrl, Publishing,
};
use crate::scenario::churn::Churn;
use crate::scenario::stamp::{Encoding, Stamper};
use crate::scenario::traffic::{self, NoSenders, Split};
use crate::target::Target;
use crate::{finish, payload, prepare};

/// Runs `broadcast`; the exit code.
pub(crate) fn run(args: BroadcastArgs) -> Result<i32, LoadError> {
    run_with(args, None)
}

/// The `pusher` scenario's channels, and its `--churn` rate.
pub(crate) type PusherRun = (Arc<crate::scenario::session::pusher::Channels>, Option<f64>);

/// Runs `broadcast`, or with `pusher` the `pusher` scenario on the same engine: its
/// connections speak Pusher's protocol, and HTTP publishers trigger through the signed API.
pub(crate) fn run_with(
    args: BroadcastArgs,
    pusher_run: Option<PusherRun>,
) -> Result<i32, LoadError> {
    let (pusher, churn_rate) = match pusher_run {
        Some((channels, churn)) => (Some(channels), churn),
        None => (None, None),
    };
    let (encoding, size) = payload(
        args.traffic.payload,
        pusher.is_some() || crate::session_needs_text(&args.traffic),
        args.size,
        broadcast::DEFAULT_SIZE,
        "publisher",
    )?;
    let rate = args.rate.unwrap_or(broadcast::DEFAULT_RATE);
    positive("--rate", rate, MAX_MESSAGE_RATE)?;
    range(
        "--subscribers",
        args.subscribers as f64,
        1.0,
        MAX_CONNECTIONS as f64,
    )?;
    range("--publishers", args.publishers as f64, 0.0, 10_000.0)?;
    if args.expect.is_some() && args.publishers != 0 {
        return Err(LoadError::Usage(
            "--expect is for an outside publisher (--publishers 0): with publishers of its own, \
             a run knows what they sent"
                .into(),
        ));
    }
    let publish_url = args
        .publish_url
        .as_deref()
        .map(str::parse::<PublishUrl>)
        .transpose()?;
    let publishing = match (&publish_url, args.publishers) {
        (Some(_), 0) => {
            return Err(LoadError::Usage(
                "--publish-url needs at least one publisher (--publishers 1 or more)".into(),
            ))
        }
        (Some(_), publishers) => Publishing::Http { publishers },
        (None, 0) => Publishing::External {
            expect: args.expect,
        },
        (None, publishers) => Publishing::WebSocket { publishers },
    };
    let ws_publishers = match publishing {
        Publishing::WebSocket { publishers } => publishers,
        _ => 0,
    };
    if args.publisher_url.is_some() && ws_publishers == 0 {
        return Err(LoadError::Usage(
            "--publisher-url needs WebSocket publishers (--publishers 1 or more)".into(),
        ));
    }
    let inflight = args
        .inflight
        .map(|p| closed_loop_share(p, &publishing))
        .transpose()?;
    let publish_timeout = seconds(
        "--publish-timeout",
        args.publish_timeout,
        0.001,
        MAX_TIMEOUT_SECS,
    )?;
    let duration = args
        .traffic
        .duration
        .unwrap_or(broadcast::DEFAULT_DURATION_SECS);
    let connections = args.subscribers + ws_publishers;
    // Checked before anything is set up: a publisher URL that misses the topic is a usage error.
    let publisher = match &args.publisher_url {
        Some(url) => {
            let mut subscribers: Target = args.url.parse()?;
            if let Some(path) = &args.path {
                subscribers.path.clone_from(path);
            }
            Some(publisher_target(url, &subscribers)?)
        }
        None => None,
    };
    let mut prepared = prepare(
        &args.url,
        args.path.as_deref(),
        connections,
        &args.traffic,
        duration,
        "publish",
    )?;
    if let Some(channels) = &pusher {
        prepared.settings.session = Some(Arc::new(crate::scenario::session::Spec::pusher(
            (**channels).clone(),
        )));
    }
    prepared.settings.split = publisher.map(|target| Split {
        from: args.subscribers,
        target,
    });
    let publisher_target = prepared.settings.split.as_ref().map(|s| s.target.clone());
    if let Some(target) = &publisher_target {
        println!("publishers: {}", target.describe());
    }
    if let Some(url) = &publish_url {
        println!("publish url: {}", url.target.describe());
    }
    // Deliveries by node: when subscribers spread over several servers, or publish elsewhere.
    let nodes =
        (prepared.settings.targets.len() > 1 || publisher_target.is_some()).then(|| Nodes {
            addresses: prepared
                .settings
                .targets
                .iter()
                .map(ToString::to_string)
                .collect(),
            sources: prepared.settings.sources.len(),
        });
    let stamper = Stamper::new(encoding, size);
    let t = &args.traffic;
    let settings_json = prepared.settings_json(
        t,
        duration,
        json!({
            "path": prepared.settings.target.path,
            "subscribers": args.subscribers,
            "publishers": args.publishers,
            "expect": args.expect,
            "publish": match publishing {
                Publishing::WebSocket { .. } => "websocket",
                Publishing::Http { .. } => "http",
                Publishing::External { .. } => "external",
            },
            "publish_url": args.publish_url,
            "publisher_url": publisher_target.as_ref().map(ToString::to_string),
            "publish_token": args.publish_token.as_ref().map(|_| "(set)"),
            "rate": inflight.is_none().then_some(rate),
            "inflight": inflight,
            "publish_timeout_s": inflight.map(|_| args.publish_timeout),
            "size": size,
        }),
    );
    let who = match &publishing {
        Publishing::WebSocket { publishers } => {
            let at = publisher_target
                .as_ref()
                .map(|t| format!(" on {t}"))
                .unwrap_or_default();
            match inflight {
                Some(p) => format!("{publishers} WebSocket publisher(s){at} with {p} in flight"),
                None => {
                    format!("{publishers} WebSocket publisher(s){at} at {rate} messages/s in total")
                }
            }
        }
        Publishing::Http { publishers } => format!(
            "{publishers} HTTP publisher(s) to {} at {rate} messages/s in total",
            args.publish_url.as_deref().unwrap_or(""),
        ),
        Publishing::External { expect: None } => "an outside publisher".to_owned(),
        Publishing::External { expect: Some(n) } => {
            format!("an outside publisher owing each subscriber {n} messages")
        }
    };
    let scenario = if pusher.is_some() {
        "pusher"
    } else {
        "broadcast"
    };
    let headline = format!(
        "{scenario} {}: {} subscribers, {who}, {size} B {}messages, {:.1} s, {} thread(s), {} \
         loop",
        prepared.settings.target,
        args.subscribers,
        if encoding == Encoding::Json {
            "JSON tick "
        } else {
            ""
        },
        duration,
        prepared.settings.threads,
        if inflight.is_some() { "closed" } else { "open" },
    );
    let subscribers = args.subscribers;
    let closed = inflight.map(|p| {
        Arc::new(ClosedLoop::new(
            u64::from(p),
            ws_publishers,
            subscribers,
            publish_timeout,
        ))
    });
    let pace = match &closed {
        Some(shared) => Pace::Closed(Arc::clone(shared)),
        None => Pace::Open { rate },
    };
    let work_publishing = publishing.clone();
    let work_stamper = stamper.clone();
    let work = move |_, plan| {
        BroadcastWork::new(
            plan,
            subscribers,
            work_publishing.clone(),
            pace.clone(),
            work_stamper.clone(),
            nodes.as_ref(),
        )
        .publishing_for(Duration::from_secs_f64(duration))
    };
    let mut http = publish_url.map(|url| {
        let senders = HttpSenders::new(
            url,
            args.publish_token.clone(),
            args.publishers,
            rate,
            stamper,
        );
        match &pusher {
            Some(channels) => senders.pusher(Arc::clone(channels)),
            None => senders,
        }
    });
    let mut no_senders = NoSenders;
    let senders: &mut dyn traffic::Senders = match &mut http {
        Some(senders) => senders,
        None => &mut no_senders,
    };
    let (outcome, churn) = match (&pusher, churn_rate) {
        (Some(channels), Some(rate)) => {
            let mut churn = Churn::new(
                senders,
                prepared.settings.target.clone(),
                Arc::clone(channels),
                rate,
            );
            let outcome = traffic::run(&prepared.settings, prepared.features, work, &mut churn)?;
            (outcome, Some(churn.tally()))
        }
        _ => (
            traffic::run(&prepared.settings, prepared.features, work, senders)?,
            None,
        ),
    };
    if let Some(error) = http.as_ref().and_then(HttpSenders::first_error) {
        eprintln!("uringcast-load: first failed publish: {error}");
    }
    let report = TrafficReport {
        scenario,
        settings: settings_json,
        pace: if closed.is_some() {
            Loop::Closed
        } else {
            Loop::Open
        },
        headline,
        unit: "deliveries",
        outcome,
        closed_loop: closed.map(|shared| shared.tally()),
        churn,
    };
    finish(&report, t)
}

/// `--inflight P` checked against who publishes: P itself, when every WebSocket publisher
/// gets at least one publish in flight.
fn closed_loop_share(inflight: u32, publishing: &Publishing) -> Result<u32, LoadError> {
    inflight_in_range(inflight)?;
    match publishing {
        Publishing::WebSocket { publishers } if u64::from(inflight) >= *publishers => Ok(inflight),
        Publishing::WebSocket { publishers } => Err(LoadError::Usage(format!(
            "--inflight {inflight} is fewer than --publishers {publishers}: each publisher needs \
             at least one publish in flight"
        ))),
        Publishing::Http { .. } | Publishing::External { .. } => Err(LoadError::Usage(
            "--inflight needs WebSocket publishers (--publishers 1 or more, no --publish-url)"
                .into(),
        )),
    }
}

/// `--publisher-url`'s target: another node, so of the subscribers' scheme (one TLS setup) and
/// on their topic. Without a path it takes the subscribers' (query included); with one, its
/// topic (the path without the query) must be theirs, or no message would reach them.
fn publisher_target(url: &str, subscribers: &Target) -> Result<Target, LoadError> {
    let mut target: Target = url.parse()?;
    if target.secure != subscribers.secure {
        return Err(LoadError::Usage(format!(
            "--publisher-url {url}: the subscribers' URL is {}, the publishers' must be too",
            if subscribers.secure {
                "wss://"
            } else {
                "ws://"
            }
        )));
    }
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    if !after_scheme.contains(['/', '?']) {
        target.path.clone_from(&subscribers.path);
        return Ok(target);
    }
    let topic = |path: &str| path.split('?').next().unwrap_or_default().to_owned();
    let (theirs, ours) = (topic(&target.path), topic(&subscribers.path));
    // `/publish/<topic>` is the publish-only path of the benchmark's URL convention.
    if theirs != ours && theirs != format!("/publish{ours}") {
        return Err(LoadError::Usage(format!(
            "--publisher-url {url}: topic {theirs} is not the subscribers' {ours}, so every \
             message would be missing; give their path, /publish{ours} or none (it defaults \
             to theirs)"
        )));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribers(url: &str) -> Target {
        url.parse().unwrap()
    }

    #[test]
    fn the_publisher_url_takes_the_subscribers_topic() {
        let subs = subscribers("ws://127.0.0.2:9001/room?token=s");
        // No path: the subscribers' path and query; the URL's own address and Host.
        let t = publisher_target("ws://127.0.0.1:9002", &subs).unwrap();
        assert_eq!(t.path, "/room?token=s");
        assert_eq!(t.addr, "127.0.0.1:9002".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:9002");
        // The same topic, another query: kept as written.
        let t = publisher_target("ws://localhost:9002/room?token=p", &subs).unwrap();
        assert_eq!(t.path, "/room?token=p");
        // The root written out is the root topic, which is not /room.
        let error = publisher_target("ws://127.0.0.1:9002/", &subs).unwrap_err();
        assert_eq!(error.exit_code(), crate::error::EXIT_USAGE);
        let message = error.to_string();
        assert!(
            message.contains("topic / is not the subscribers' /room"),
            "{message}"
        );
        assert!(!message.contains('\n'));
        assert!(publisher_target("ws://127.0.0.1:9002/other", &subs).is_err());
        // The publish-only path of the same topic, and of the root topic.
        let t = publisher_target("ws://127.0.0.1:9002/publish/room", &subs).unwrap();
        assert_eq!(t.path, "/publish/room");
        assert!(publisher_target("ws://127.0.0.1:9002/publish/other", &subs).is_err());
        assert!(publisher_target("ws://127.0.0.1:9002/publishroom", &subs).is_err());
        let root = subscribers("ws://127.0.0.2:9001/");
        assert!(publisher_target("ws://127.0.0.1:9002/publish/", &root).is_ok());
        // Another scheme: refused.
        let message = publisher_target("wss://127.0.0.1:9002/room", &subs)
            .unwrap_err()
            .to_string();
        assert!(message.contains("must be too"), "{message}");
        // Another machine (an address literal: nothing is resolved or sent): accepted.
        let t = publisher_target("ws://192.0.2.1:9002/room", &subs).unwrap();
        assert_eq!(t.addr, "192.0.2.1:9002".parse().unwrap());
    }
}
