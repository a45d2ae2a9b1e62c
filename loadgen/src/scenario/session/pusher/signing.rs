//! What an app's backend computes from its secret, sans IO: the auth string of a private or
//! presence subscription, and the signed query of an HTTP API request (Pusher's request
//! signing: `auth_key`, `auth_timestamp`, `auth_version`, `body_md5`, `auth_signature`).
//! The clock is an argument; nothing here sends anything.

use md5::{Digest as _, Md5};
use ring::hmac;

/// An app's credentials, as its backend holds them.
#[derive(Clone)]
pub struct Credentials {
    /// The app id, in the HTTP API's paths (`/apps/{id}/...`).
    pub app_id: String,
    /// The public key clients connect with (`/app/{key}`).
    pub key: String,
    /// The signing key made from the secret (the secret itself is not kept).
    secret: hmac::Key,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never appears in a log or a report.
        f.debug_struct("Credentials")
            .field("app_id", &self.app_id)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The app `app_id` with `key` and `secret`.
    pub fn new(app_id: &str, key: &str, secret: &str) -> Self {
        Self {
            app_id: app_id.to_owned(),
            key: key.to_owned(),
            secret: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    /// The `auth` of a subscription to `channel` by `socket_id`, as the app's auth endpoint
    /// answers it: `key:hex(HMAC-SHA256(secret, "socket_id:channel[:channel_data]"))`;
    /// `channel_data` only for a presence channel.
    pub fn channel_auth(
        &self,
        socket_id: &str,
        channel: &str,
        channel_data: Option<&str>,
    ) -> String {
        let mut to_sign = format!("{socket_id}:{channel}");
        if let Some(data) = channel_data {
            to_sign.push(':');
            to_sign.push_str(data);
        }
        format!("{}:{}", self.key, self.sign(&to_sign))
    }

    /// The query string of a signed API request `method path` with `body`, at `timestamp`
    /// (Unix seconds): the auth parameters and `body_md5` (when there is a body), then
    /// `auth_signature` over `"METHOD\nPATH\nSORTED_QUERY"`.
    pub fn signed_query(&self, method: &str, path: &str, body: &[u8], timestamp: u64) -> String {
        let mut params = vec![
            ("auth_key", self.key.clone()),
            ("auth_timestamp", timestamp.to_string()),
            ("auth_version", "1.0".to_owned()),
        ];
        if !body.is_empty() {
            params.push(("body_md5", md5_hex(body)));
        }
        params.sort();
        let query = params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let signature = self.sign(&format!("{method}\n{path}\n{query}"));
        format!("{query}&auth_signature={signature}")
    }

    /// Lowercase hex of HMAC-SHA256(secret, text).
    fn sign(&self, text: &str) -> String {
        hex(hmac::sign(&self.secret, text.as_bytes()).as_ref())
    }
}

/// Lowercase hex of the body's MD5, as `body_md5` carries it.
pub fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // The credentials of Pusher's own worked examples (channels docs, "authorizing
    // connections" and "HTTP API reference: generating authentication signatures").
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn private_channel_auth_matches_pushers_example() {
        let c = Credentials::new("3", KEY, SECRET);
        assert_eq!(
            c.channel_auth("1234.1234", "private-foobar", None),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn presence_auth_signs_the_channel_data() {
        let c = Credentials::new("3", KEY, SECRET);
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        assert_eq!(
            c.channel_auth("1234.1234", "presence-foobar", Some(data)),
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
        // Without the data, or with other data: another signature.
        assert_ne!(
            c.channel_auth("1234.1234", "presence-foobar", None),
            c.channel_auth("1234.1234", "presence-foobar", Some(data))
        );
    }

    #[test]
    fn api_requests_are_signed_as_pushers_example() {
        let c = Credentials::new("3", KEY, SECRET);
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(md5_hex(body), "ec365a775a4cd0599faeb73354201b6f");
        let query = c.signed_query("POST", "/apps/3/events", body, 1_353_088_179);
        assert_eq!(
            query,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&\
             body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=\
             da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        // A GET has no body and no body_md5.
        let query = c.signed_query("GET", "/apps/3/channels", b"", 1_353_088_179);
        assert!(!query.contains("body_md5"), "{query}");
        assert!(query.starts_with("auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&auth_signature="));
    }

    #[test]
    fn the_secret_is_not_printed() {
        let c = Credentials::new("3", KEY, SECRET);
        assert!(!format!("{c:?}").contains(SECRET));
    }
}
