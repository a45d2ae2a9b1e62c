//! The Channels HTTP API on the WebSocket port, with Pusher's request signing:
//! `POST /apps/{id}/events`, `POST /apps/{id}/batch_events`, `GET /apps/{id}/channels`,
//! `GET /apps/{id}/channels/{name}`, `GET /apps/{id}/channels/{name}/users` and
//! `POST /apps/{id}/users/{user_id}/terminate_connections`.
//!
//! The head is checked (route, app, signature, timestamp) before any body byte is read; the
//! body is then checked against its `body_md5`. Errors carry Pusher's statuses with a
//! one-line message.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::json;

use super::app::App;
use super::channel::Channel;
use super::handler::{codes, topic, Node, USER_CHANNEL_PREFIX};
use super::message::{self, Data};
use super::signing::{self, SignedHead};
use super::socket_id;
use crate::broadcast::{HttpCall, HttpHead};
use crate::protocol::handshake::{http_response, reason_phrase, Request};
use crate::protocol::{CloseCode, OpCode};

/// Bytes of a request body beyond its events' data: names, channel lists, JSON escaping.
const BODY_OVERHEAD_BYTES: usize = 32 * 1024;

/// A route of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route<'a> {
    Events,
    BatchEvents,
    Channels,
    Channel(&'a str),
    Users(&'a str),
    Terminate(&'a str),
}

impl<'a> Route<'a> {
    /// The route of a path after `/apps/{id}`, and the method it takes.
    fn parse(rest: &'a str) -> Option<(Self, &'static str)> {
        let parts: Vec<&str> = rest.split('/').collect();
        Some(match parts.as_slice() {
            ["events"] => (Self::Events, "POST"),
            ["batch_events"] => (Self::BatchEvents, "POST"),
            ["channels"] => (Self::Channels, "GET"),
            ["channels", name] => (Self::Channel(name), "GET"),
            ["channels", name, "users"] => (Self::Users(name), "GET"),
            ["users", user, "terminate_connections"] => (Self::Terminate(user), "POST"),
            _ => return None,
        })
    }
}

/// Decides from the head: `None` for paths outside `/apps/`, an error response, or how much
/// body to read.
pub(crate) fn head(node: &Node, request: &Request) -> Option<HttpHead> {
    ours(request.path())?;
    Some(match check(node, request) {
        Ok((app, route, _)) => HttpHead::Read {
            max_body_bytes: match route {
                Route::Events => app.limits.max_event_data_bytes + BODY_OVERHEAD_BYTES,
                Route::BatchEvents => {
                    app.limits.max_batch_events
                        * (app.limits.max_event_data_bytes + BODY_OVERHEAD_BYTES)
                }
                Route::Terminate(_) => BODY_OVERHEAD_BYTES,
                Route::Channels | Route::Channel(_) | Route::Users(_) => 0,
            },
        },
        Err(response) => HttpHead::Respond(response),
    })
}

/// Serves a request whose body has arrived.
pub(crate) fn serve(
    node: &Node,
    call: &mut HttpCall<'_>,
    request: &Request,
    body: &[u8],
) -> Option<Vec<u8>> {
    ours(request.path())?;
    let (app, route, signed) = match check(node, request) {
        Ok(checked) => checked,
        Err(response) => return Some(response),
    };
    if let Err(error) = signing::check_body(&signed, body) {
        return Some(text(error.status(), &error.to_string()));
    }
    let query = signing::parse_query(request.query().unwrap_or_default()).unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    Some(match route {
        Route::Events => match serde_json::from_slice::<Event>(body) {
            Ok(event) => match check_event(app, &event) {
                Ok(checked) => ok(&publish(node, call, app, checked)),
                Err((status, message)) => text(status, &message),
            },
            Err(error) => text(400, &format!("bad event JSON: {error}")),
        },
        Route::BatchEvents => batch(node, call, app, body),
        Route::Channels => channels(node, app, param("filter_by_prefix"), param("info")),
        // Path segments may come percent-encoded (`@ , ; =` in a channel name): the
        // signature covers the path as sent, the lookup uses the decoded name.
        Route::Channel(name) => match segment(name) {
            Some(name) => channel(node, app, &name, param("info")),
            None => text(400, "invalid channel name"),
        },
        Route::Users(name) => match segment(name) {
            Some(name) => users(node, app, &name),
            None => text(400, "invalid channel name"),
        },
        Route::Terminate(user) => {
            let Some(user) = segment(user) else {
                return Some(text(400, "invalid user id"));
            };
            let user_topic = topic(app, &format!("{USER_CHANNEL_PREFIX}{user}"));
            call.close_subscribers(
                &user_topic,
                CloseCode(codes::UNAUTHORIZED),
                "connection terminated",
            );
            ok(&json!({}))
        }
    })
}

/// A percent-decoded path segment (`+` is a plus here, not a space).
fn segment(raw: &str) -> Option<String> {
    signing::percent_decode(&raw.replace('+', "%2B"))
}

/// Whether the API serves this path: `/apps/…`, and `/users/…` (see [`check`]).
fn ours(path: &str) -> Option<()> {
    (path.starts_with("/apps/") || path.starts_with("/users/")).then_some(())
}

/// Finds the app and route, and checks the signature of the head.
///
/// The Python SDK (pusher 3.3) sends `terminate_connections` to `/users/{id}/…` without
/// the `/apps/{app_id}` prefix; such a path names its app by the signed `auth_key`.
fn check<'r>(
    node: &'r Node,
    request: &'r Request,
) -> Result<(&'r App, Route<'r>, SignedHead), Vec<u8>> {
    let path = request.path();
    let (app, rest) = if let Some(rest) = path.strip_prefix("/apps/") {
        let (id, rest) = rest.split_once('/').unwrap_or((rest, ""));
        (node.apps.by_id(id), rest)
    } else {
        let query = signing::parse_query(request.query().unwrap_or_default()).unwrap_or_default();
        let key = query
            .iter()
            .find(|(k, _)| k == "auth_key")
            .map(|(_, v)| v.as_str());
        let rest = path.strip_prefix('/').unwrap_or_default();
        let app = key.and_then(|key| node.apps.by_key(key));
        (app, if rest.starts_with("users/") { rest } else { "" })
    };
    let app = app.ok_or_else(|| text(404, "unknown app"))?;
    let (route, method) = Route::parse(rest).ok_or_else(|| text(404, "unknown API path"))?;
    if request.method() != method {
        return Err(text(405, &format!("use {method}")));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signed = signing::check_head(
        request.method(),
        request.path(),
        request.query().unwrap_or_default(),
        now,
        |key| (key == app.key).then_some(app.secret.as_str()),
    )
    .map_err(|error| text(error.status(), &error.to_string()))?;
    Ok((app, route, signed))
}

/// An event of `events` or of a batch.
#[derive(Deserialize)]
struct Event {
    name: String,
    data: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

/// An event that passed every check, ready to publish.
struct Checked<'e> {
    event: &'e Event,
    /// Each channel, parsed (`None` for a user's `#server-to-user-` channel).
    channels: Vec<(&'e str, Option<Channel<'e>>)>,
    except: Option<crate::broadcast::Peer>,
}

/// Checks one event against the app's limits, publishing nothing.
fn check_event<'e>(app: &App, event: &'e Event) -> Result<Checked<'e>, (u16, String)> {
    let limits = &app.limits;
    if event.name.is_empty() || event.name.len() > 200 {
        return Err((400, "name must be 1 to 200 bytes".into()));
    }
    if event.data.len() > limits.max_event_data_bytes {
        return Err((
            413,
            format!("data is over {} bytes", limits.max_event_data_bytes),
        ));
    }
    let names: &[String] = match (&event.channel, &event.channels) {
        (Some(one), None) => std::slice::from_ref(one),
        (None, Some(many)) => many,
        _ => return Err((400, "give channel or channels".into())),
    };
    if names.is_empty() || names.len() > limits.max_event_channels {
        return Err((
            400,
            format!("give 1 to {} channels", limits.max_event_channels),
        ));
    }
    let mut channels = Vec::with_capacity(names.len());
    for name in names {
        let user_channel = name
            .strip_prefix(USER_CHANNEL_PREFIX)
            .is_some_and(|id| !id.is_empty() && id.len() <= super::handler::MAX_USER_ID_BYTES);
        match Channel::parse(name) {
            Ok(channel) => channels.push((name.as_str(), Some(channel))),
            Err(_) if user_channel => channels.push((name.as_str(), None)),
            Err(error) => return Err((400, format!("channel {name:?}: {error}"))),
        }
    }
    let except = match &event.socket_id {
        Some(id) if !socket_id::is_valid(id) => {
            return Err((400, "socket_id is not of the form 123.456".into()))
        }
        Some(id) => socket_id::decode(id),
        None => None,
    };
    Ok(Checked {
        event,
        channels,
        except,
    })
}

/// Publishes a checked event to its channels, each encoded once; returns the `info` asked
/// for.
fn publish(
    node: &Node,
    call: &mut HttpCall<'_>,
    app: &App,
    checked: Checked<'_>,
) -> serde_json::Value {
    let event = checked.event;
    let mut info = serde_json::Map::new();
    for (name, channel) in checked.channels {
        let encoded = message::encode_event(&event.name, name, Data::Text(&event.data), None);
        call.publish_stamped(
            &topic(app, name),
            OpCode::Text,
            encoded.as_bytes(),
            checked.except,
            message::stamp_position,
        );
        let mut state = node.state(app);
        if channel.is_some_and(|c| c.is_cache()) {
            state.cache(name, encoded);
        }
        if let Some(wanted) = &event.info {
            let counts = state.info(name).unwrap_or(super::state::ChannelInfo {
                subscriptions: 0,
                users: 0,
            });
            let mut entry = serde_json::Map::new();
            if wanted.split(',').any(|w| w == "subscription_count") {
                entry.insert("subscription_count".into(), counts.subscriptions.into());
            }
            if wanted.split(',').any(|w| w == "user_count")
                && channel.is_some_and(|c| c.is_presence())
            {
                entry.insert("user_count".into(), counts.users.into());
            }
            info.insert(name.to_owned(), entry.into());
        }
    }
    if event.info.is_some() {
        json!({ "channels": info })
    } else {
        json!({})
    }
}

fn batch(node: &Node, call: &mut HttpCall<'_>, app: &App, body: &[u8]) -> Vec<u8> {
    #[derive(Deserialize)]
    struct Batch {
        batch: Vec<Event>,
    }
    let batch = match serde_json::from_slice::<Batch>(body) {
        Ok(batch) => batch.batch,
        Err(error) => return text(400, &format!("bad batch JSON: {error}")),
    };
    if batch.len() > app.limits.max_batch_events {
        return text(
            400,
            &format!(
                "a batch holds at most {} events",
                app.limits.max_batch_events
            ),
        );
    }
    // Every event is checked before any is published: a batch is all or nothing.
    let mut checked = Vec::with_capacity(batch.len());
    for event in &batch {
        if event.channels.is_some() {
            return text(400, "a batch event names one channel");
        }
        match check_event(app, event) {
            Ok(ok) => checked.push(ok),
            Err((status, message)) => return text(status, &message),
        }
    }
    let results: Vec<serde_json::Value> = checked
        .into_iter()
        .map(|event| {
            let info = publish(node, call, app, event);
            // A batch answers each event's one channel's info, or `{}`.
            info.get("channels")
                .and_then(|c| c.as_object())
                .and_then(|c| c.values().next().cloned())
                .unwrap_or_else(|| json!({}))
        })
        .collect();
    ok(&json!({ "batch": results }))
}

fn channels(node: &Node, app: &App, prefix: Option<&str>, info: Option<&str>) -> Vec<u8> {
    let prefix = prefix.unwrap_or_default();
    let wants_users = info.is_some_and(|i| i.split(',').any(|w| w == "user_count"));
    if wants_users && !prefix.starts_with("presence-") {
        return text(400, "info=user_count needs filter_by_prefix=presence-");
    }
    let list = node.state(app).channels(prefix);
    let mut out = serde_json::Map::new();
    for (name, counts) in list {
        let entry = if wants_users {
            json!({ "user_count": counts.users })
        } else {
            json!({})
        };
        out.insert(name, entry);
    }
    ok(&json!({ "channels": out }))
}

fn channel(node: &Node, app: &App, name: &str, info: Option<&str>) -> Vec<u8> {
    let Ok(channel) = Channel::parse(name) else {
        return text(400, "invalid channel name");
    };
    let wanted = |w: &str| info.is_some_and(|i| i.split(',').any(|x| x == w));
    if wanted("user_count") && !channel.is_presence() {
        return text(400, "user_count is only for presence channels");
    }
    let counts = node.state(app).info(name);
    let mut out = json!({ "occupied": counts.is_some() });
    let counts = counts.unwrap_or(super::state::ChannelInfo {
        subscriptions: 0,
        users: 0,
    });
    if wanted("subscription_count") {
        out["subscription_count"] = counts.subscriptions.into();
    }
    if wanted("user_count") {
        out["user_count"] = counts.users.into();
    }
    ok(&out)
}

fn users(node: &Node, app: &App, name: &str) -> Vec<u8> {
    if !Channel::parse(name).is_ok_and(|c| c.is_presence()) {
        return text(400, "users are listed for presence channels only");
    }
    let ids = node.state(app).users(name);
    let users: Vec<_> = ids.into_iter().map(|id| json!({ "id": id })).collect();
    ok(&json!({ "users": users }))
}

/// The driver closes the connection after each response: say so, or a keep-alive client
/// (Node's default agent) sends its next request into the closed socket.
const CLOSE: &[(&str, &str)] = &[("Connection", "close")];

fn ok(body: &serde_json::Value) -> Vec<u8> {
    http_response(
        200,
        "OK",
        CLOSE,
        Some("application/json"),
        body.to_string().as_bytes(),
    )
}

fn text(status: u16, message: &str) -> Vec<u8> {
    http_response(
        status,
        reason_phrase(status),
        CLOSE,
        Some("text/plain; charset=utf-8"),
        format!("{message}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::Route;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("events"), Some((Route::Events, "POST")));
        assert_eq!(
            Route::parse("channels/presence-a/users"),
            Some((Route::Users("presence-a"), "GET"))
        );
        assert_eq!(
            Route::parse("users/7/terminate_connections"),
            Some((Route::Terminate("7"), "POST"))
        );
        assert_eq!(Route::parse("channels/a/b"), None);
        assert_eq!(
            super::segment("presence-a%40b%2Cc").as_deref(),
            Some("presence-a@b,c")
        );
        assert_eq!(super::segment("a+b").as_deref(), Some("a+b"));
        assert_eq!(super::segment("%zz"), None);
        assert_eq!(Route::parse(""), None);
    }
}
