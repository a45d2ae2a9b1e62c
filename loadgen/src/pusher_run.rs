//! `uringcast-load pusher`: the `broadcast` engine speaking Pusher Channels protocol 7. Its
//! flags are checked and turned into a broadcast run whose connections subscribe through
//! [`session::pusher`](crate::scenario::session::pusher) and whose HTTP publishers trigger
//! through the signed API.

use std::sync::Arc;

use crate::broadcast_run;
use crate::cli::{BroadcastArgs, ProtocolArg, PusherArgs};
use crate::error::LoadError;
use crate::scenario::broadcast;
use crate::scenario::session::pusher::signing::Credentials;
use crate::scenario::session::pusher::{Channels, Kind, MAX_CHANNELS};
use crate::target::Target;

/// Runs `pusher`; the exit code.
pub(crate) fn run(args: PusherArgs) -> Result<i32, LoadError> {
    let t = &args.traffic;
    if t.session.protocol != ProtocolArg::Websocket
        || t.session.on_open.is_some()
        || t.session.ready_when.is_some()
        || t.payload_at.is_some()
        || t.publish_template.is_some()
    {
        return Err(LoadError::Usage(
            "pusher speaks Pusher's protocol itself: --protocol, --on-open, --ready-when, \
             --payload-at and --publish-template do not apply"
                .into(),
        ));
    }
    crate::cli::range("--channels", args.channels as f64, 1.0, MAX_CHANNELS as f64)?;
    let kind = match (args.private, args.presence) {
        (_, true) => Kind::Presence,
        (true, false) => Kind::Private,
        (false, false) => Kind::Public,
    };
    if args.client_events && (kind == Kind::Public || args.channels != 1) {
        return Err(LoadError::Usage(
            "--client-events needs --private or --presence and --channels 1: a client event \
             reaches one channel, whose subscribers must be all of them"
                .into(),
        ));
    }
    if args.client_events && args.publishers == 0 {
        return Err(LoadError::Usage(
            "--client-events needs --publishers 1 or more".into(),
        ));
    }
    let event = args.event.clone().unwrap_or_else(|| {
        if args.client_events {
            "client-load".to_owned()
        } else {
            "load".to_owned()
        }
    });
    if args.client_events != event.starts_with("client-") {
        return Err(LoadError::Usage(format!(
            "--event {event}: client events are named client-*, and only they"
        )));
    }
    if let Some(rate) = args.churn {
        crate::cli::positive("--churn", rate, crate::cli::MAX_RATE)?;
    }
    let credentials = Credentials::new(&args.app_id, &args.app_key, &args.app_secret);
    let channels = Arc::new(Channels::new(
        credentials,
        kind,
        &args.channel_name,
        args.channels,
        &event,
    ));
    let target: Target = args.url.parse()?;
    let publish_url = match (&args.publish_url, args.client_events, args.publishers) {
        (_, true, _) | (None, false, 0) => None,
        (Some(url), false, _) => Some(url.trim_end_matches('/').to_owned()),
        (None, false, _) if target.secure => {
            return Err(LoadError::Usage(
                "a wss:// URL needs --publish-url http://HOST:PORT for the HTTP API (https:// \
                 is not supported)"
                    .into(),
            ))
        }
        (None, false, _) => Some(format!("http://{}", target.host)),
    };
    println!(
        "pusher app {}: {} {} channel(s) {}-0..{}, event {event}",
        args.app_id,
        args.channels,
        match kind {
            Kind::Public => "public",
            Kind::Private => "private",
            Kind::Presence => "presence",
        },
        args.channel_name,
        args.channels - 1,
    );
    let broadcast_args = BroadcastArgs {
        url: args.url,
        subscribers: args.subscribers,
        path: Some(channels.websocket_path()),
        rate: args.rate,
        inflight: None,
        publish_timeout: broadcast::DEFAULT_PUBLISH_TIMEOUT_SECS,
        size: args.size,
        publishers: args.publishers,
        // The path is the API's; the HTTP publisher replaces it with a signed one.
        publish_url: publish_url.map(|base| format!("{base}/apps/{}/events", args.app_id)),
        publisher_url: None,
        publish_token: None,
        expect: None,
        traffic: args.traffic,
    };
    broadcast_run::run_with(broadcast_args, Some((channels, args.churn)))
}
