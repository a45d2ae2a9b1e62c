//! `uringcast-load broadcast`: its flags checked, its run set up and started, its report.

use serde_json::json;

use crate::cli::{positive, range, BroadcastArgs, MAX_CONNECTIONS, MAX_MESSAGE_RATE};
use crate::error::LoadError;
use crate::report::{Loop, TrafficReport};
use crate::scenario::broadcast::{self, BroadcastWork, HttpSenders, PublishUrl, Publishing};
use crate::scenario::stamp::{Encoding, Stamper};
use crate::scenario::traffic::{self, NoSenders};
use crate::{finish, payload, prepare};

/// Runs `broadcast`; the exit code.
pub(crate) fn run(args: BroadcastArgs) -> Result<i32, LoadError> {
    let (encoding, size) = payload(
        args.traffic.payload,
        false,
        args.size,
        broadcast::DEFAULT_SIZE,
        "publisher",
    )?;
    positive("--rate", args.rate, MAX_MESSAGE_RATE)?;
    range(
        "--subscribers",
        args.subscribers as f64,
        1.0,
        MAX_CONNECTIONS as f64,
    )?;
    range("--publishers", args.publishers as f64, 0.0, 10_000.0)?;
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
        (None, 0) => Publishing::External,
        (None, publishers) => Publishing::WebSocket { publishers },
    };
    let ws_publishers = match publishing {
        Publishing::WebSocket { publishers } => publishers,
        _ => 0,
    };
    let duration = args
        .traffic
        .duration
        .unwrap_or(broadcast::DEFAULT_DURATION_SECS);
    let connections = args.subscribers + ws_publishers;
    let prepared = prepare(
        &args.url,
        args.path.as_deref(),
        connections,
        &args.traffic,
        duration,
    )?;
    let stamper = Stamper::new(encoding, size);
    let t = &args.traffic;
    let settings_json = prepared.settings_json(
        t,
        duration,
        json!({
            "path": prepared.settings.target.path,
            "subscribers": args.subscribers,
            "publishers": args.publishers,
            "publish": match publishing {
                Publishing::WebSocket { .. } => "websocket",
                Publishing::Http { .. } => "http",
                Publishing::External => "external",
            },
            "publish_url": args.publish_url,
            "publish_token": args.publish_token.as_ref().map(|_| "(set)"),
            "rate": args.rate,
            "size": size,
        }),
    );
    let who = match &publishing {
        Publishing::WebSocket { publishers } => {
            format!(
                "{publishers} WebSocket publisher(s) at {} messages/s in total",
                args.rate
            )
        }
        Publishing::Http { publishers } => format!(
            "{publishers} HTTP publisher(s) to {} at {} messages/s in total",
            args.publish_url.as_deref().unwrap_or(""),
            args.rate
        ),
        Publishing::External => "an outside publisher".to_owned(),
    };
    let headline =
        format!(
        "broadcast {}: {} subscribers, {who}, {size} B {}messages, {:.1} s, {} thread(s), open \
         loop",
        prepared.settings.target,
        args.subscribers,
        if encoding == Encoding::Json { "JSON tick " } else { "" },
        duration,
        prepared.settings.threads,
    );
    let subscribers = args.subscribers;
    let rate = args.rate;
    let work_publishing = publishing.clone();
    let work_stamper = stamper.clone();
    let work = move |_, plan| {
        BroadcastWork::new(
            plan,
            subscribers,
            work_publishing.clone(),
            rate,
            work_stamper.clone(),
        )
    };
    let mut http = publish_url.map(|url| {
        HttpSenders::new(
            url,
            args.publish_token.clone(),
            args.publishers,
            rate,
            stamper,
        )
    });
    let outcome = match &mut http {
        Some(senders) => traffic::run(&prepared.settings, prepared.features, work, senders)?,
        None => traffic::run(&prepared.settings, prepared.features, work, &mut NoSenders)?,
    };
    if let Some(error) = http.as_ref().and_then(HttpSenders::first_error) {
        eprintln!("uringcast-load: first failed publish: {error}");
    }
    let report = TrafficReport {
        scenario: "broadcast",
        settings: settings_json,
        pace: Loop::Open,
        headline,
        unit: "deliveries",
        outcome,
    };
    finish(&report, t)
}
