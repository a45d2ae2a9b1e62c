//! The Channels HTTP API's request signing: `auth_key`, `auth_timestamp`, `auth_version`,
//! `body_md5` and `auth_signature` in the query string.
//!
//! The signature is hex HMAC-SHA256, under the app's secret, of
//! `METHOD\nPATH\nQUERY`, where QUERY is every parameter but `auth_signature`, keys
//! lower-cased, sorted by key, joined as `key=value` with `&`, values decoded.
//! [`check_head`] runs on the request head, before any body byte is read; [`check_body`]
//! then compares the body with its `body_md5`.

use md5::{Digest, Md5};

use super::auth::{hex, verify_hex, AuthError};

/// How far `auth_timestamp` may be from the server's clock, in seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;
/// Query parameters accepted, at most.
pub const MAX_QUERY_PARAMS: usize = 32;

/// Why a request was refused; every variant is a 401 but [`SigningError::BadQuery`] (400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// A parameter the scheme needs is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// `auth_key` names no app here (or not the app of the path).
    #[error("unknown auth_key")]
    UnknownKey,
    /// `auth_version` is not 1.0.
    #[error("auth_version must be 1.0")]
    Version,
    /// `auth_timestamp` is not a number, or more than 600 s off.
    #[error("auth_timestamp is more than 600 s from the server's clock; check your clock")]
    Expired,
    /// The signature does not match.
    #[error("invalid signature: you should have sent HmacSHA256Hex({0:?}, your_secret_key)")]
    Signature(String),
    /// The body does not match `body_md5`.
    #[error("body_md5 does not match the body")]
    BodyMd5,
    /// The query string is malformed or too long.
    #[error("malformed query string")]
    BadQuery,
}

impl SigningError {
    /// The HTTP status Pusher answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadQuery => 400,
            Self::Missing(_)
            | Self::UnknownKey
            | Self::Version
            | Self::Expired
            | Self::Signature(_)
            | Self::BodyMd5 => 401,
        }
    }
}

/// What a signed head carried, for [`check_body`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHead {
    /// `body_md5`, lower-cased, when given.
    pub body_md5: Option<String>,
}

/// Checks the head of an API request: the app of `auth_key` must be the one `secret_of`
/// returns a secret for; the timestamp within 600 s of `now_unix`; the signature over
/// `method`, `path` and the sorted query. Compared in constant time.
///
/// # Errors
///
/// See [`SigningError`].
pub fn check_head<'s>(
    method: &str,
    path: &str,
    query: &str,
    now_unix: u64,
    secret_of: impl FnOnce(&str) -> Option<&'s str>,
) -> Result<SignedHead, SigningError> {
    let params = parse_query(query)?;
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let key = get("auth_key").ok_or(SigningError::Missing("auth_key"))?;
    let timestamp = get("auth_timestamp").ok_or(SigningError::Missing("auth_timestamp"))?;
    let version = get("auth_version").ok_or(SigningError::Missing("auth_version"))?;
    let signature = get("auth_signature").ok_or(SigningError::Missing("auth_signature"))?;
    let secret = secret_of(key).ok_or(SigningError::UnknownKey)?;
    if version != "1.0" {
        return Err(SigningError::Version);
    }
    let timestamp: u64 = timestamp.parse().map_err(|_| SigningError::Expired)?;
    if timestamp.abs_diff(now_unix) > MAX_CLOCK_SKEW_SECS {
        return Err(SigningError::Expired);
    }
    let to_sign = string_to_sign(method, path, &params);
    match verify_hex(secret, &to_sign, signature) {
        Ok(()) => Ok(SignedHead {
            body_md5: get("body_md5").map(str::to_ascii_lowercase),
        }),
        Err(
            AuthError::Missing
            | AuthError::Malformed
            | AuthError::WrongKey
            | AuthError::BadSignature,
        ) => Err(SigningError::Signature(to_sign)),
    }
}

/// Checks a body against the head's `body_md5`: a non-empty body needs one.
///
/// # Errors
///
/// [`SigningError::Missing`] or [`SigningError::BodyMd5`].
pub fn check_body(head: &SignedHead, body: &[u8]) -> Result<(), SigningError> {
    match &head.body_md5 {
        // The md5 is no secret: the client sent it in the clear.
        Some(expected) if *expected == md5_hex(body) => Ok(()),
        Some(_) => Err(SigningError::BodyMd5),
        None if body.is_empty() => Ok(()),
        None => Err(SigningError::Missing("body_md5")),
    }
}

/// The string the signature covers.
pub fn string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .collect();
    sorted.sort();
    let query: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{method}\n{path}\n{}", query.join("&"))
}

/// Hex MD5 of a body.
pub fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

/// Splits and percent-decodes a query string, keys lower-cased.
///
/// # Errors
///
/// More than [`MAX_QUERY_PARAMS`] pairs, or a bad escape or non-UTF-8 value.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, SigningError> {
    let mut params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if params.len() == MAX_QUERY_PARAMS {
            return Err(SigningError::BadQuery);
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key).ok_or(SigningError::BadQuery)?;
        let value = percent_decode(value).ok_or(SigningError::BadQuery)?;
        params.push((key.to_ascii_lowercase(), value));
    }
    Ok(params)
}

/// `application/x-www-form-urlencoded` decoding: `%XX` and `+` for a space.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let pair = [bytes.next()?, bytes.next()?];
                let mut byte = [0u8];
                if !super::auth::unhex(std::str::from_utf8(&pair).ok()?, &mut byte) {
                    return None;
                }
                out.push(byte[0]);
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pusher::auth::sign;
    use proptest::prelude::*;

    const SECRET: &str = "7ad3773142a6692b25b8";

    /// Signs a request as a Pusher SDK does.
    fn signed(method: &str, path: &str, ts: u64, body: &[u8], extra: &str) -> String {
        let mut query =
            format!("auth_key=278d425bdf160c739803&auth_timestamp={ts}&auth_version=1.0");
        if !body.is_empty() {
            query.push_str(&format!("&body_md5={}", md5_hex(body)));
        }
        if !extra.is_empty() {
            query.push('&');
            query.push_str(extra);
        }
        let params = parse_query(&query).unwrap();
        let signature = sign(SECRET, &string_to_sign(method, path, &params));
        format!("{query}&auth_signature={signature}")
    }

    fn check(method: &str, path: &str, query: &str, now: u64) -> Result<SignedHead, SigningError> {
        check_head(method, path, query, now, |key| {
            (key == "278d425bdf160c739803").then_some(SECRET)
        })
    }

    #[test]
    fn pusher_documented_example() {
        // Pusher's HTTP API reference: the signature of this events request.
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(md5_hex(body), "ec365a775a4cd0599faeb73354201b6f");
        let query = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        let head = check("POST", "/apps/3/events", query, 1353088179 + 10).unwrap();
        assert_eq!(check_body(&head, body), Ok(()));
        assert_eq!(check_body(&head, b"{}"), Err(SigningError::BodyMd5));
    }

    #[test]
    fn every_part_is_checked() {
        let now = 1_700_000_000;
        let q = signed(
            "GET",
            "/apps/1/channels",
            now,
            b"",
            "filter_by_prefix=presence-&info=user_count",
        );
        assert!(check("GET", "/apps/1/channels", &q, now).is_ok());
        assert!(matches!(
            check("POST", "/apps/1/channels", &q, now),
            Err(SigningError::Signature(_))
        ));
        assert!(matches!(
            check("GET", "/apps/2/channels", &q, now),
            Err(SigningError::Signature(_))
        ));
        let tampered = q.replace("user_count", "subscription_count");
        assert!(matches!(
            check("GET", "/apps/1/channels", &tampered, now),
            Err(SigningError::Signature(_))
        ));
        assert_eq!(
            check("GET", "/apps/1/channels", &q, now + 601),
            Err(SigningError::Expired)
        );
        assert!(check("GET", "/apps/1/channels", &q, now - 600).is_ok());
        let other_key = q.replace("auth_key=278d", "auth_key=999d");
        assert_eq!(
            check("GET", "/apps/1/channels", &other_key, now),
            Err(SigningError::UnknownKey)
        );
        let version = q.replace("auth_version=1.0", "auth_version=2.0");
        assert_eq!(
            check("GET", "/apps/1/channels", &version, now),
            Err(SigningError::Version)
        );
        let unsigned = q.split("&auth_signature").next().unwrap();
        assert_eq!(
            check("GET", "/apps/1/channels", unsigned, now),
            Err(SigningError::Missing("auth_signature"))
        );
        assert_eq!(
            check("GET", "/x", "a=%zz", now),
            Err(SigningError::BadQuery)
        );
        let many = "a=1&".repeat(MAX_QUERY_PARAMS + 1);
        assert_eq!(check("GET", "/x", &many, now), Err(SigningError::BadQuery));
    }

    #[test]
    fn a_body_needs_its_md5() {
        let head = SignedHead { body_md5: None };
        assert_eq!(check_body(&head, b""), Ok(()));
        assert_eq!(
            check_body(&head, b"x"),
            Err(SigningError::Missing("body_md5"))
        );
    }

    #[test]
    fn encoded_values_are_signed_decoded() {
        let now = 1_700_000_000;
        let q = signed(
            "GET",
            "/apps/1/channels",
            now,
            b"",
            "info=user_count,subscription_count",
        );
        let encoded = q.replace(
            "user_count,subscription_count",
            "user_count%2Csubscription_count",
        );
        assert!(check("GET", "/apps/1/channels", &encoded, now).is_ok());
    }

    proptest! {
        #[test]
        fn signed_requests_pass_and_bodies_are_bound(
            body in proptest::collection::vec(any::<u8>(), 1..200),
            flip in any::<prop::sample::Index>(),
            ts in 0u64..4_000_000_000,
        ) {
            let q = signed("POST", "/apps/9/events", ts, &body, "");
            let head = check("POST", "/apps/9/events", &q, ts).unwrap();
            prop_assert_eq!(check_body(&head, &body), Ok(()));
            let mut other = body.clone();
            let i = flip.index(other.len());
            other[i] ^= 1;
            prop_assert_eq!(check_body(&head, &other), Err(SigningError::BodyMd5));
        }

        #[test]
        fn decoding_never_panics(text in "\\PC{0,64}") {
            let _ = parse_query(&text);
        }
    }
}
