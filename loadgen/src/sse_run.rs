//! `uringcast-load sse`: its flags checked, its run set up and started, its report.

use serde_json::json;

use crate::cli::{
    positive, range, seconds, SseArgs, MAX_CONNECTIONS, MAX_HOLD_SECS, MAX_MESSAGE_RATE,
};
use crate::error::LoadError;
use crate::report::{Loop, TrafficReport};
use crate::scenario::broadcast::{self, BroadcastWork, HttpSenders, Pace, PublishUrl, Publishing};
use crate::scenario::sse::SseWork;
use crate::scenario::stamp::{Encoding, Stamper};
use crate::scenario::traffic::{self, NoSenders};
use crate::{finish, payload, prepare};

/// Runs `sse`; the exit code.
pub(crate) fn run(args: SseArgs) -> Result<i32, LoadError> {
    // Refused here with the scheme's own message; prepare() maps it for the engine.
    websocket_url(&args.url)?;
    let url = args.url.clone();
    let t = &args.traffic;
    let session = &t.session;
    if session.protocol != crate::cli::ProtocolArg::Websocket
        || session.on_open.is_some()
        || session.ready_when.is_some()
        || t.payload_at.is_some()
        || t.publish_template.is_some()
        || t.deflate
    {
        return Err(LoadError::Usage(
            "sse takes no --protocol, --on-open, --ready-when, --payload-at, --publish-template \
             or --deflate: its streams are plain Server-Sent Events"
                .into(),
        ));
    }
    let (encoding, size) = payload(
        t.payload,
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
    let reconnect_after_ns = args
        .reconnect_after
        .map(|s| seconds("--reconnect-after", s, 0.0, MAX_HOLD_SECS))
        .transpose()?
        .map(|d| d.as_nanos() as u64);
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
        (None, 0) => Publishing::External { expect: None },
        (None, publishers) => Publishing::WebSocket { publishers },
    };
    let ws_publishers = match publishing {
        Publishing::WebSocket { publishers } => publishers,
        _ => 0,
    };
    let duration = t.duration.unwrap_or(broadcast::DEFAULT_DURATION_SECS);
    let connections = args.subscribers + ws_publishers;
    let mut prepared = prepare(
        &url,
        args.path.as_deref(),
        connections,
        t,
        duration,
        "publish",
    )?;
    prepared.settings.streams_below = args.subscribers;
    if let Some(url) = &publish_url {
        println!("publish url: {}", url.target.describe());
    }
    let stamper = Stamper::new(encoding, size);
    let settings_json = prepared.settings_json(
        t,
        duration,
        json!({
            "url": args.url,
            "path": prepared.settings.target.path,
            "subscribers": args.subscribers,
            "publishers": args.publishers,
            "publish": match publishing {
                Publishing::WebSocket { .. } => "websocket",
                Publishing::Http { .. } => "http",
                Publishing::External { .. } => "external",
            },
            "publish_url": args.publish_url,
            "publish_token": args.publish_token.as_ref().map(|_| "(set)"),
            "rate": args.rate,
            "size": size,
            "reconnect_after_s": args.reconnect_after,
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
        Publishing::External { .. } => "an outside publisher".to_owned(),
    };
    let headline = format!(
        "sse {}: {} streams, {who}, {size} B {}messages, {:.1} s, {} thread(s){}",
        args.url,
        args.subscribers,
        if encoding == Encoding::Json {
            "JSON tick "
        } else {
            ""
        },
        duration,
        prepared.settings.threads,
        args.reconnect_after
            .map(|s| format!(", each stream reconnecting once after {s} s"))
            .unwrap_or_default(),
    );
    let subscribers = args.subscribers;
    let rate = args.rate;
    let work_publishing = publishing.clone();
    let work_stamper = stamper.clone();
    let work = move |_, plan| {
        let inner = BroadcastWork::new(
            plan,
            subscribers,
            work_publishing.clone(),
            Pace::Open { rate },
            work_stamper.clone(),
            None,
        );
        SseWork::new(inner, plan, subscribers, reconnect_after_ns)
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
        scenario: "sse",
        settings: settings_json,
        pace: Loop::Open,
        headline,
        unit: "deliveries",
        outcome,
        closed_loop: None,
        churn: None,
    };
    finish(&report, t)
}

/// Whether `url` is `http://` or `https://` (any case).
pub(crate) fn is_stream_url(url: &str) -> bool {
    ["http://", "https://"].iter().any(|p| {
        url.get(..p.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(p))
    })
}

/// The stream URL as the engine's `ws://` (`http://`) or `wss://` (`https://`): the same
/// host, port, path and TLS; the WebSocket publishers connect there too.
pub(crate) fn websocket_url(url: &str) -> Result<String, LoadError> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => "ws",
        "https" => "wss",
        _ => {
            return Err(LoadError::Usage(format!(
                "{url:?} is not an http:// or https:// URL (expected http://HOST[:PORT][/PATH])"
            )))
        }
    };
    // A port left out is HTTP's, which the WebSocket schemes share (RFC 6455 §3).
    Ok(format!("{scheme}://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls_map_to_the_engines_schemes() {
        assert_eq!(
            websocket_url("http://127.0.0.1:9/t").unwrap(),
            "ws://127.0.0.1:9/t"
        );
        assert_eq!(websocket_url("HTTPS://h/t?x").unwrap(), "wss://h/t?x");
        assert!(websocket_url("ws://127.0.0.1/").is_err());
        assert!(websocket_url("127.0.0.1").is_err());
    }
}
