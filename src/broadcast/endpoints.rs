//! The plain HTTP endpoints served on the WebSocket port: `POST /publish/<topic>`,
//! `GET /healthz` and `GET /metrics`.

use std::sync::Arc;

use bytes::Bytes;

use super::Hub;
use crate::auth::{Authorizer, UnixTime};
use crate::config::Config;
use crate::driver::Admission;
use crate::protocol::handshake::{http_response, Request};
use crate::protocol::OpCode;
use crate::refusal::{Reason, RefusalCounts};

/// What an HTTP request turned into.
pub(crate) enum Routed {
    Response(Vec<u8>),
    Publish { topic: Box<str>, frame: Bytes },
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

    /// The 404 or 405 (with `Allow`, RFC 9110 §15.5.6) for a request no endpoint takes.
    fn refusal(path: &str) -> Vec<u8> {
        let (status, reason, allow, body) = match path {
            "/healthz" | "/metrics" => (405, "Method Not Allowed", Some("GET"), "use GET\n"),
            p if p.starts_with("/publish/") => {
                (405, "Method Not Allowed", Some("POST"), "use POST\n")
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
    pub(crate) fn route(&self, request: &Request, body: &[u8], hub: &Hub) -> Routed {
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
                    frame: super::frame(opcode, body),
                }
            }
            (_, "/healthz" | "/metrics") => text(405, "Method Not Allowed", "use GET\n"),
            (_, path) if path.starts_with("/publish/") => {
                text(405, "Method Not Allowed", "use POST\n")
            }
            _ => text(404, "Not Found", "not found\n"),
        }
    }

    /// The answer to an accepted publish: 202 with the subscribers reached.
    pub(crate) fn published(reached: u64) -> Vec<u8> {
        let body = format!("{{\"subscribers\":{reached}}}\n");
        http_response(
            202,
            "Accepted",
            &[],
            Some("application/json"),
            body.as_bytes(),
        )
    }
}
