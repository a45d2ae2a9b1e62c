//! The plain HTTP endpoints served on the WebSocket port: `POST /publish/<topic>`,
//! `GET /history/<topic>`, `GET /healthz` and `GET /metrics`.

use std::sync::Arc;

use bytes::Bytes;

use super::history::{Log, Recovery};
use super::publication::Position;
use super::Mailboxes;
use crate::auth::{Authorizer, UnixTime};
use crate::config::Config;
use crate::driver::Admission;
use crate::protocol::handshake::{http_response, Request};
use crate::protocol::OpCode;
use crate::refusal::{Reason, RefusalCounts};

/// What an HTTP request turned into.
pub(crate) enum Routed {
    Response(Vec<u8>),
    Publish {
        topic: Box<str>,
        opcode: OpCode,
        payload: Bytes,
    },
    /// `GET /history/<topic>?since=EPOCH:OFFSET&limit=N`, authorized.
    History {
        topic: Box<str>,
        since: Option<Position>,
        limit: usize,
    },
}

/// The plain HTTP endpoints: `POST /publish/<topic>`, `GET /healthz`, `GET /metrics`.
#[derive(Clone, Debug)]
pub(crate) struct Endpoints {
    /// Who may publish: the publish token or a JWT whose `publish` claim covers the topic;
    /// the publish endpoint is off while neither is configured.
    access: Arc<Authorizer>,
    max_publish_bytes: usize,
}

impl Endpoints {
    pub(crate) fn from_config(config: &Config) -> Self {
        Self {
            access: Arc::clone(&config.authorizer),
            max_publish_bytes: config.driver.max_message_bytes.min(usize::MAX as u64) as usize,
        }
    }

    /// Decides how to read a request that is not an upgrade, from its head alone: a publish
    /// that is off or unauthorized is refused before any byte of its body is read, and the
    /// connection closes instead of draining it.
    pub(crate) fn admit(&self, request: &Request, refusals: &RefusalCounts) -> Admission {
        match (request.method(), request.path()) {
            ("GET", "/healthz" | "/metrics") => Admission::Http { max_body_bytes: 0 },
            ("GET", path) if path.starts_with("/history/") => {
                match self.authorize_history(request) {
                    Ok(()) => Admission::Http { max_body_bytes: 0 },
                    Err((reason, refusal)) => {
                        if let Some(reason) = reason {
                            refusals.count(reason);
                        }
                        Admission::Respond(refusal)
                    }
                }
            }
            ("POST", path) if path.starts_with("/publish/") => match self.authorize(request) {
                Ok(()) => Admission::Http {
                    max_body_bytes: self.max_publish_bytes,
                },
                Err((reason, refusal)) => {
                    if let Some(reason) = reason {
                        refusals.count(reason);
                    }
                    Admission::Respond(refusal)
                }
            },
            // Wrong methods and unknown paths are answered from the head: any body they
            // carry is never read, so it cannot earn a 413 instead of the right status.
            (_, path) => Admission::Respond(Self::refusal(path)),
        }
    }

    /// A publish needs the endpoint on (404: no credential configured) and a credential for
    /// its topic: the publish token, or a JWT whose `publish` claim covers it (401, 403).
    fn authorize(&self, request: &Request) -> Result<(), (Option<Reason>, Vec<u8>)> {
        if !self.access.locked() {
            return Err((
                None,
                http_response(
                    404,
                    "Not Found",
                    &[("Connection", "close")],
                    Some("text/plain; charset=utf-8"),
                    b"publishing over HTTP is off: start with --publish-token or a JWT key\n",
                ),
            ));
        }
        let topic = super::topic_of_path(&request.path()["/publish".len()..]);
        match self
            .access
            .authorize_publish(request, topic, UnixTime::now())
        {
            Ok(_) => Ok(()),
            Err(refusal) => Err((Some(refusal.reason), refusal.response())),
        }
    }

    /// Reading a topic's history needs a credential configured (404 without) and, for the
    /// topic, the publish token or a JWT whose `publish` or `subscribe` claim covers it.
    fn authorize_history(&self, request: &Request) -> Result<(), (Option<Reason>, Vec<u8>)> {
        if !self.access.locked() {
            return Err((
                None,
                http_response(
                    404,
                    "Not Found",
                    &[],
                    Some("text/plain; charset=utf-8"),
                    b"reading history over HTTP is off: start with --publish-token or a JWT key\n",
                ),
            ));
        }
        let topic = super::topic_of_path(&request.path()["/history".len()..]);
        let now = UnixTime::now();
        let refused = match self.access.authorize_publish(request, topic, now) {
            Ok(_) => return Ok(()),
            Err(refusal) => refusal,
        };
        if self.access.verifier().is_some()
            && self.access.authorize_subscribe(request, topic, now).is_ok()
        {
            return Ok(());
        }
        Err((Some(refused.reason), refused.response()))
    }

    /// The 404 or 405 (with `Allow`, RFC 9110 §15.5.6) for a request no endpoint takes.
    fn refusal(path: &str) -> Vec<u8> {
        let (status, reason, allow, body) = match path {
            "/healthz" | "/metrics" => (405, "Method Not Allowed", Some("GET"), "use GET\n"),
            p if p.starts_with("/publish/") => {
                (405, "Method Not Allowed", Some("POST"), "use POST\n")
            }
            p if p.starts_with("/history/") => {
                (405, "Method Not Allowed", Some("GET"), "use GET\n")
            }
            _ => (404, "Not Found", None, "not found\n"),
        };
        let headers: Vec<(&str, &str)> = allow.map(|a| ("Allow", a)).into_iter().collect();
        http_response(
            status,
            reason,
            &headers,
            Some("text/plain; charset=utf-8"),
            body.as_bytes(),
        )
    }

    /// Answers a request whose body has arrived.
    pub(crate) fn route(&self, request: &Request, body: &[u8], hub: &Mailboxes) -> Routed {
        let text = |status: u16, reason: &str, body: &str| {
            Routed::Response(http_response(
                status,
                reason,
                &[],
                Some("text/plain; charset=utf-8"),
                body.as_bytes(),
            ))
        };
        match (request.method(), request.path()) {
            ("GET", "/healthz") => text(200, "OK", "ok\n"),
            ("GET", "/metrics") => Routed::Response(http_response(
                200,
                "OK",
                &[],
                Some("text/plain; version=0.0.4; charset=utf-8"),
                super::metrics::render(hub).as_bytes(),
            )),
            ("POST", path) if path.starts_with("/publish/") => {
                // Admitted only after `authorize` passed on the head; checked again so that a
                // route never publishes without it.
                if let Err((_, refusal)) = self.authorize(request) {
                    return Routed::Response(refusal);
                }
                // `/publish/room-a` is topic `room-a`; `/publish/` is the root topic `/`.
                let topic = super::topic_of_path(&path["/publish".len()..]);
                let is_text = request
                    .header("content-type")
                    .is_some_and(|v| v.len() >= 5 && v[..5].eq_ignore_ascii_case(b"text/"));
                let opcode = if is_text {
                    if std::str::from_utf8(body).is_err() {
                        return text(400, "Bad Request", "a text/* body must be UTF-8\n");
                    }
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                Routed::Publish {
                    topic: topic.into(),
                    opcode,
                    payload: Bytes::copy_from_slice(body),
                }
            }
            ("GET", path) if path.starts_with("/history/") => {
                if let Err((_, refusal)) = self.authorize_history(request) {
                    return Routed::Response(refusal);
                }
                let query = request.query().unwrap_or("");
                let since = match crate::sse::request::query_value(query, "since") {
                    None => None,
                    Some(value) => match value.parse::<Position>() {
                        Ok(position) => Some(position),
                        Err(_) => return text(400, "Bad Request", "since= must be EPOCH:OFFSET\n"),
                    },
                };
                let limit = match crate::sse::request::query_value(query, "limit") {
                    None => usize::MAX,
                    Some(value) => match value.parse::<usize>() {
                        Ok(limit) => limit,
                        Err(_) => return text(400, "Bad Request", "limit= must be a count\n"),
                    },
                };
                Routed::History {
                    topic: super::topic_of_path(&path["/history".len()..]).into(),
                    since,
                    limit,
                }
            }
            (_, "/healthz" | "/metrics") => text(405, "Method Not Allowed", "use GET\n"),
            (_, path) if path.starts_with("/publish/") => {
                text(405, "Method Not Allowed", "use POST\n")
            }
            _ => text(404, "Not Found", "not found\n"),
        }
    }

    /// The answer to an accepted publish: 202 with the subscribers reached, and the
    /// publication's position when history is on.
    pub(crate) fn published(reached: u64, position: Option<Position>) -> Vec<u8> {
        let body = match position {
            Some(p) => format!(
                "{{\"subscribers\":{reached},\"epoch\":\"{}\",\"offset\":{}}}\n",
                p.epoch, p.offset
            ),
            None => format!("{{\"subscribers\":{reached}}}\n"),
        };
        http_response(
            202,
            "Accepted",
            &[],
            Some("application/json"),
            body.as_bytes(),
        )
    }
}

impl Endpoints {
    /// The answer to `GET /history/<topic>`: the publications after `since` as JSON, all of
    /// them or, when that is not possible, none and `"recovered":false`, with the topic's
    /// current position either way. Text payloads are strings; binary ones are base64 with
    /// `"binary":true`. 404 when the server keeps no history.
    pub(crate) fn history(
        &self,
        log: Option<&dyn Log>,
        topic: &str,
        since: Option<Position>,
        limit: usize,
    ) -> Vec<u8> {
        use base64::Engine as _;
        let Some(log) = log else {
            return http_response(
                404,
                "Not Found",
                &[],
                Some("text/plain; charset=utf-8"),
                b"history is off: start with --history N\n",
            );
        };
        let recovery = log.read(topic, since, limit);
        let head = recovery.head();
        let (recovered, publications) = match recovery {
            Recovery::Recovered { publications, .. } => (true, publications),
            Recovery::NotRecovered { .. } => (false, Vec::new()),
        };
        let publications: Vec<serde_json::Value> = publications
            .iter()
            .map(|p| {
                let offset = p.position().map_or(0, |p| p.offset);
                match std::str::from_utf8(p.payload()) {
                    Ok(text) if p.opcode() == OpCode::Text => {
                        serde_json::json!({"offset": offset, "data": text})
                    }
                    _ => serde_json::json!({
                        "offset": offset,
                        "binary": true,
                        "data": base64::engine::general_purpose::STANDARD.encode(p.payload()),
                    }),
                }
            })
            .collect();
        let body = serde_json::json!({
            "topic": topic,
            "recovered": recovered,
            "epoch": head.epoch.as_str(),
            "offset": head.offset,
            "publications": publications,
        });
        let mut body = body.to_string();
        body.push('\n');
        http_response(200, "OK", &[], Some("application/json"), body.as_bytes())
    }
}
