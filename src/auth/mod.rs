//! Who may subscribe to and publish on which topic, decided from a request head alone.
//!
//! Sans-IO: the caller passes the parsed [`Request`] and the time; nothing here reads a
//! socket or a clock. Any request type that has a topic uses the same two calls
//! ([`Authorizer::authorize_subscribe`], [`Authorizer::authorize_publish`]): a WebSocket
//! upgrade, a Server-Sent Events request, `POST /publish/<topic>`.
//!
//! A credential comes in `Authorization: Bearer <token>` or, because browsers cannot set
//! headers on a WebSocket or an `EventSource`, in the query as `?token=<token>`
//! (percent-decoded). It is either the server's publish token (compared in constant time) or
//! a JWT ([`token`]) whose `subscribe` and `publish` claims list topic [`pattern`]s.

pub mod pattern;
pub mod token;

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

pub use pattern::{TopicPattern, TopicPatterns};
pub use token::{Claims, KeyError, SubjectHash, TokenError, Verifier, LEEWAY_SECONDS};

use crate::protocol::handshake::Request;
use crate::refusal::{Reason, Refusal};

/// Who may publish from a WebSocket connection (`--client-publish`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientPublish {
    /// Any connection may publish to its topic: the default while no credential is
    /// configured (neither a publish token nor a JWT key).
    All,
    /// Subscribers are read-only: a message from one closes it with 1008. The default when
    /// only a publish token is configured. Publish-only connections (`/publish/<topic>`) still
    /// publish with a credential.
    None,
    /// A connection may publish to the topics its JWT's `publish` claim covers; a message
    /// to another closes it with 1008. The default when a JWT key is configured.
    Token,
}

/// What an authorized request may do: its token's claims, when it had one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The JWT's claims; `None` for the publish token, or when no JWT key is configured.
    pub claims: Option<Claims>,
}

/// The server's access policy: the keys that check credentials, and who publishes.
#[derive(Clone, Debug)]
pub struct Authorizer {
    verifier: Option<Verifier>,
    publish_token: Option<Box<str>>,
    client_publish: ClientPublish,
}

impl Authorizer {
    /// A policy. `client_publish` of `None` takes the safe default: [`ClientPublish::Token`]
    /// with a JWT key, [`ClientPublish::None`] with only a publish token, else
    /// [`ClientPublish::All`].
    pub fn new(
        verifier: Option<Verifier>,
        publish_token: Option<String>,
        client_publish: Option<ClientPublish>,
    ) -> Self {
        let publish_token = publish_token
            .filter(|t| !t.is_empty())
            .map(String::into_boxed_str);
        let client_publish = client_publish.unwrap_or(match (&verifier, &publish_token) {
            (Some(_), _) => ClientPublish::Token,
            (None, Some(_)) => ClientPublish::None,
            (None, None) => ClientPublish::All,
        });
        Self {
            verifier,
            publish_token,
            client_publish,
        }
    }

    /// Anyone may subscribe to and publish on anything: no credential is configured.
    pub fn open() -> Self {
        Self::new(None, None, None)
    }

    /// Whether any credential (a publish token or a JWT key) is configured.
    pub fn locked(&self) -> bool {
        self.verifier.is_some() || self.publish_token.is_some()
    }

    /// Whether subscriptions need a JWT (a JWT key is configured).
    pub fn tokens_required(&self) -> bool {
        self.verifier.is_some()
    }

    /// Who may publish from a WebSocket connection.
    pub fn client_publish(&self) -> ClientPublish {
        self.client_publish
    }

    /// The JWT checker, if a key is configured.
    pub fn verifier(&self) -> Option<&Verifier> {
        self.verifier.as_ref()
    }

    /// May this request subscribe to `topic`? Without a JWT key, yes. With one, only with a
    /// valid token whose `subscribe` claim covers `topic`.
    ///
    /// # Errors
    ///
    /// 401 for a missing, bad or expired token, 403 for a topic the token does not cover.
    pub fn authorize_subscribe(
        &self,
        request: &Request,
        topic: &str,
        now: UnixTime,
    ) -> Result<Grant, Refusal> {
        let Some(verifier) = &self.verifier else {
            return Ok(Grant { claims: None });
        };
        let token = credential(request).ok_or(Refusal::new(Reason::TokenMissing))?;
        let claims = verify(verifier, &token, now)?;
        if !claims.subscribe.covers(topic) {
            return Err(Refusal::new(Reason::TopicNotCovered));
        }
        Ok(Grant {
            claims: Some(claims),
        })
    }

    /// May this request publish to `topic` (a publish-only WebSocket, `POST /publish`)?
    /// With no credential configured, as `--client-publish` says (`all`: yes; else 403).
    /// With one, only with the publish token or a valid JWT whose `publish` claim covers
    /// `topic`.
    ///
    /// # Errors
    ///
    /// 401 for a missing, wrong, bad or expired credential, 403 for a topic not covered.
    pub fn authorize_publish(
        &self,
        request: &Request,
        topic: &str,
        now: UnixTime,
    ) -> Result<Grant, Refusal> {
        if !self.locked() {
            return match self.client_publish {
                ClientPublish::All => Ok(Grant { claims: None }),
                _ => Err(Refusal::new(Reason::PublishDenied)),
            };
        }
        let given = credential(request).ok_or(Refusal::new(Reason::TokenMissing))?;
        if let Some(token) = &self.publish_token {
            if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                return Ok(Grant { claims: None });
            }
        }
        let Some(verifier) = &self.verifier else {
            return Err(Refusal::new(Reason::TokenInvalid));
        };
        let claims = verify(verifier, &given, now)?;
        if !claims.publish.covers(topic) {
            return Err(Refusal::new(Reason::TopicNotCovered));
        }
        Ok(Grant {
            claims: Some(claims),
        })
    }

    /// May a subscriber holding `grant` publish a message to `topic` at `now`?
    ///
    /// # Errors
    ///
    /// [`Reason::PublishDenied`] (`--client-publish none`, or a token whose `publish` claim
    /// does not cover `topic`), [`Reason::TokenExpired`] (its token has expired since).
    pub fn authorize_message(
        &self,
        grant: &Grant,
        topic: &str,
        now: UnixTime,
    ) -> Result<(), Reason> {
        match self.client_publish {
            ClientPublish::All => Ok(()),
            ClientPublish::None => Err(Reason::PublishDenied),
            ClientPublish::Token => match &grant.claims {
                Some(claims) if claims.expired_at(now.0) => Err(Reason::TokenExpired),
                Some(claims) if claims.publish.covers(topic) => Ok(()),
                _ => Err(Reason::PublishDenied),
            },
        }
    }
}

/// Seconds since the Unix epoch: the clock every check is made against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixTime(pub u64);

impl UnixTime {
    /// The system clock, now.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }
}

impl From<SystemTime> for UnixTime {
    fn from(time: SystemTime) -> Self {
        Self(time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }
}

/// The bearer credential of a request: `Authorization: Bearer`, else the `token` query
/// parameter, percent-decoded.
pub fn credential(request: &Request) -> Option<Cow<'_, str>> {
    if let Some(value) = request.header("authorization") {
        let value = std::str::from_utf8(value).ok()?;
        let (scheme, token) = value.split_once(' ')?;
        // The scheme is case-insensitive (RFC 9110 §11.1).
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| Cow::Borrowed(token.trim()))
            .filter(|t| !t.is_empty());
    }
    let query = request.query()?;
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))?;
    percent_decode(raw).filter(|t| !t.is_empty())
}

fn verify(verifier: &Verifier, token: &str, now: UnixTime) -> Result<Claims, Refusal> {
    verifier.verify(token, now.0).map_err(|error| {
        Refusal::new(match error {
            TokenError::Expired => Reason::TokenExpired,
            TokenError::NotYetValid | TokenError::Invalid(_) => Reason::TokenInvalid,
        })
    })
}

/// Decodes `%XX` escapes (RFC 3986 §2.1); `None` for a bad escape or bytes that are not
/// UTF-8. A `+` stays a `+`: tokens are not form data.
fn percent_decode(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains('%') {
        return Some(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Compares secrets without an early exit on the first difference, so the time taken does
/// not tell how much of a guess matched (only whether its length did).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::token::tests::{hs256, NOW};
    use super::*;
    use crate::protocol::handshake::ServerHandshake;
    use proptest::prelude::*;
    use serde_json::json;

    fn request(target: &str, headers: &[(&str, &str)]) -> Request {
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let (_, request) = ServerHandshake::default()
            .feed(head.as_bytes())
            .expect("a valid head");
        request.expect("a complete head")
    }

    fn jwt_policy(client_publish: Option<ClientPublish>) -> Authorizer {
        Authorizer::new(
            Some(Verifier::hs256(b"k").expect("key")),
            None,
            client_publish,
        )
    }

    fn token(claims: serde_json::Value) -> String {
        hs256(b"k", &claims)
    }

    const AT: UnixTime = UnixTime(NOW);

    #[test]
    fn subscribe_needs_a_token_that_covers_the_topic() {
        let policy = jwt_policy(None);
        let good = token(json!({"exp": NOW + 60, "subscribe": ["news.*", "prices"]}));
        let status = |r: &Request, topic| {
            policy
                .authorize_subscribe(r, topic, AT)
                .map_err(|e| e.status())
        };
        let by_query = request(&format!("/news.eu?x=1&token={good}"), &[]);
        assert!(status(&by_query, "news.eu").is_ok());
        let by_header = request("/prices", &[("Authorization", &format!("Bearer {good}"))]);
        assert!(status(&by_header, "prices").is_ok());
        let lower = request("/prices", &[("authorization", &format!("bearer {good}"))]);
        assert!(status(&lower, "prices").is_ok());
        // A token for other topics: 403, from the head.
        assert_eq!(status(&by_query, "newsroom"), Err(403));
        assert_eq!(status(&by_query, "weather"), Err(403));
        assert_eq!(status(&request("/prices", &[]), "prices"), Err(401));
        let forged = hs256(b"not k", &json!({"exp": NOW + 60, "subscribe": ["*"]}));
        assert_eq!(
            status(&request(&format!("/p?token={forged}"), &[]), "p"),
            Err(401)
        );
        let expired = token(json!({"exp": NOW - 600, "subscribe": ["*"]}));
        let refusal = policy
            .authorize_subscribe(&request(&format!("/p?token={expired}"), &[]), "p", AT)
            .expect_err("expired");
        assert_eq!(refusal.reason, Reason::TokenExpired);
        // The header wins over the query; a header with another scheme is no credential.
        let basic = request(
            &format!("/p?token={good}"),
            &[("Authorization", "Basic Zm9vOmJhcg==")],
        );
        assert_eq!(status(&basic, "prices"), Err(401));
    }

    #[test]
    fn without_a_key_anyone_subscribes() {
        let open = Authorizer::open();
        assert!(!open.locked());
        assert_eq!(open.client_publish(), ClientPublish::All);
        assert!(open
            .authorize_subscribe(&request("/x", &[]), "x", AT)
            .is_ok());
        assert!(open
            .authorize_publish(&request("/publish/x", &[]), "x", AT)
            .is_ok());
    }

    #[test]
    fn a_credential_makes_publishing_need_one() {
        let policy = Authorizer::new(None, Some("s3cret".into()), None);
        assert_eq!(policy.client_publish(), ClientPublish::None);
        let publish = |r: &Request| policy.authorize_publish(r, "t", AT).map_err(|e| e.reason);
        assert_eq!(
            publish(&request("/publish/t", &[])),
            Err(Reason::TokenMissing)
        );
        assert_eq!(
            publish(&request("/publish/t?token=s3cre", &[])),
            Err(Reason::TokenInvalid)
        );
        assert!(publish(&request("/publish/t?token=s3cret", &[])).is_ok());
        assert!(publish(&request("/publish/t?token=s3%63ret", &[])).is_ok());
        assert!(publish(&request(
            "/publish/t",
            &[("Authorization", "Bearer s3cret")]
        ))
        .is_ok());
        // Subscribers are read-only by default once a credential exists.
        let grant = Grant { claims: None };
        assert_eq!(
            policy.authorize_message(&grant, "t", AT),
            Err(Reason::PublishDenied)
        );
        // Explicitly open publishing keeps today's behaviour for subscribers.
        let all = Authorizer::new(None, Some("s3cret".into()), Some(ClientPublish::All));
        assert!(all.authorize_message(&grant, "t", AT).is_ok());
        // ...but not for publish-only connections, which need the credential regardless.
        assert!(all
            .authorize_publish(&request("/publish/t", &[]), "t", AT)
            .is_err());
        // With nothing configured, `none` refuses publish-only connections too.
        let none = Authorizer::new(None, None, Some(ClientPublish::None));
        assert_eq!(
            none.authorize_publish(&request("/publish/t", &[]), "t", AT)
                .map_err(|e| e.status()),
            Err(403)
        );
    }

    #[test]
    fn publishing_with_a_jwt_follows_its_publish_claim() {
        let policy = jwt_policy(None);
        assert_eq!(policy.client_publish(), ClientPublish::Token);
        let jwt = token(json!({"exp": NOW + 60, "subscribe": ["chat.*"], "publish": ["chat.a"]}));
        let r = request(&format!("/publish/chat.a?token={jwt}"), &[]);
        assert!(policy.authorize_publish(&r, "chat.a", AT).is_ok());
        assert_eq!(
            policy
                .authorize_publish(&r, "chat.b", AT)
                .map_err(|e| e.status()),
            Err(403)
        );
        let grant = policy
            .authorize_subscribe(&request(&format!("/chat.a?token={jwt}"), &[]), "chat.a", AT)
            .expect("covered");
        assert!(policy.authorize_message(&grant, "chat.a", AT).is_ok());
        assert_eq!(
            policy.authorize_message(&grant, "chat.b", AT),
            Err(Reason::PublishDenied)
        );
        // Once the token expires, the connection can no longer publish.
        assert_eq!(
            policy.authorize_message(&grant, "chat.a", UnixTime(NOW + 61 + LEEWAY_SECONDS)),
            Err(Reason::TokenExpired)
        );
    }

    #[test]
    fn credentials_come_from_the_header_or_the_query() {
        let get = |target: &str, headers: &[(&str, &str)]| {
            credential(&request(target, headers)).map(Cow::into_owned)
        };
        assert_eq!(get("/a?token=abc", &[]), Some("abc".into()));
        assert_eq!(get("/a?x=1&token=a%2Bb&y=2", &[]), Some("a+b".into()));
        assert_eq!(get("/a?xtoken=abc", &[]), None);
        assert_eq!(get("/a?token=", &[]), None);
        assert_eq!(get("/a?token=%zz", &[]), None);
        assert_eq!(get("/a?token=%F", &[]), None);
        assert_eq!(
            get("/a", &[("Authorization", "Bearer  t ")]),
            Some("t".into())
        );
        assert_eq!(get("/a", &[("Authorization", "Bearer")]), None);
    }

    proptest! {
        /// Decoding never panics, and decodes what encoding made.
        #[test]
        fn percent_decoding_round_trips(text in "\\PC{0,24}", junk in "[%0-9a-zA-Z]{0,12}") {
            let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
            let decoded = percent_decode(&encoded);
            prop_assert_eq!(decoded.as_deref(), Some(text.as_str()));
            let _ = percent_decode(&junk);
        }

        /// Only the exact secret passes.
        #[test]
        fn constant_time_eq_is_equality(a in proptest::collection::vec(any::<u8>(), 0..8),
                                        b in proptest::collection::vec(any::<u8>(), 0..8)) {
            prop_assert_eq!(constant_time_eq(&a, &b), a == b);
        }
    }
}
