//! Channel and user authentication: the signatures an app's auth endpoint makes with its
//! secret, checked here in constant time.
//!
//! - A private or presence subscription carries `auth` = `key:hex(HMAC-SHA256(secret,
//!   "socket_id:channel"))`, with `:channel_data` appended to the signed string on presence.
//! - `pusher:signin` carries `auth` over `"socket_id::user::user_data"`.
//!
//! HMAC-SHA256 comes from `ring`, already in the tree for TLS, whose `hmac::verify` compares
//! in constant time.

use ring::hmac;

/// Why a signature was refused. The message never holds the secret or the expected value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `auth` was given.
    #[error("no auth signature given")]
    Missing,
    /// `auth` is not `key:64-hex-digits`.
    #[error("auth is not in the form key:signature")]
    Malformed,
    /// The key part is not this app's key.
    #[error("auth names another app key")]
    WrongKey,
    /// The signature does not match.
    #[error("invalid signature")]
    BadSignature,
}

/// Hex HMAC-SHA256 of `message` under `secret`: what an auth endpoint computes.
pub fn sign(secret: &str, message: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hex(hmac::sign(&key, message.as_bytes()).as_ref())
}

/// Checks a hex signature over `message` in constant time.
///
/// # Errors
///
/// [`AuthError::Malformed`] for anything but 64 hex digits, [`AuthError::BadSignature`] for
/// a wrong one.
pub fn verify_hex(secret: &str, message: &str, signature: &str) -> Result<(), AuthError> {
    let mut raw = [0u8; 32];
    if !unhex(signature, &mut raw) {
        return Err(AuthError::Malformed);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, message.as_bytes(), &raw).map_err(|_| AuthError::BadSignature)
}

/// Checks a subscription's `auth` for `channel` (and, on presence, its `channel_data`).
///
/// # Errors
///
/// See [`AuthError`].
pub fn verify_channel(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: Option<&str>,
) -> Result<(), AuthError> {
    let signature = split_auth(key, auth)?;
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    verify_hex(secret, &message, signature)
}

/// Checks a `pusher:signin`'s `auth` over its `user_data`.
///
/// # Errors
///
/// See [`AuthError`].
pub fn verify_signin(
    key: &str,
    secret: &str,
    socket_id: &str,
    user_data: &str,
    auth: Option<&str>,
) -> Result<(), AuthError> {
    let signature = split_auth(key, auth)?;
    verify_hex(
        secret,
        &format!("{socket_id}::user::{user_data}"),
        signature,
    )
}

/// `key:signature` → the signature, once the key is this app's. The key is public, so
/// comparing it plainly leaks nothing.
fn split_auth<'a>(key: &str, auth: Option<&'a str>) -> Result<&'a str, AuthError> {
    let auth = auth.ok_or(AuthError::Missing)?;
    let (given_key, signature) = auth.split_once(':').ok_or(AuthError::Malformed)?;
    if given_key != key {
        return Err(AuthError::WrongKey);
    }
    Ok(signature)
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Decodes exactly `out.len()` bytes of hex (either case); false for anything else.
pub(crate) fn unhex(text: &str, out: &mut [u8]) -> bool {
    let text = text.as_bytes();
    if text.len() != out.len() * 2 {
        return false;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => *byte = hi << 4 | lo,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The example of Pusher's authentication docs: key 278d425bdf160c739803,
    // secret 7ad3773142a6692b25b8, socket 1234.1234, channel private-foobar.
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn pusher_documented_private_signature() {
        let auth =
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert_eq!(
            verify_channel(KEY, SECRET, "1234.1234", "private-foobar", None, Some(auth)),
            Ok(())
        );
        assert_eq!(
            sign(SECRET, "1234.1234:private-foobar"),
            auth.split_once(':').unwrap().1
        );
    }

    #[test]
    fn pusher_documented_presence_signature() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let auth =
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80";
        assert_eq!(
            verify_channel(
                KEY,
                SECRET,
                "1234.1234",
                "presence-foobar",
                Some(data),
                Some(auth)
            ),
            Ok(())
        );
    }

    #[test]
    fn refusals_say_why() {
        let good = format!("{KEY}:{}", sign(SECRET, "1.2:private-a"));
        let check =
            |auth: Option<&str>| verify_channel(KEY, SECRET, "1.2", "private-a", None, auth);
        assert_eq!(check(Some(&good)), Ok(()));
        assert_eq!(check(None), Err(AuthError::Missing));
        assert_eq!(check(Some("nocolon")), Err(AuthError::Malformed));
        assert_eq!(check(Some(&format!("{KEY}:zz"))), Err(AuthError::Malformed));
        let other = good.replacen(KEY, "otherkey", 1);
        assert_eq!(check(Some(&other)), Err(AuthError::WrongKey));
        // Another socket's signature does not pass here.
        let stolen = format!("{KEY}:{}", sign(SECRET, "1.3:private-a"));
        assert_eq!(check(Some(&stolen)), Err(AuthError::BadSignature));
        // Upper-case hex is the same signature.
        assert_eq!(
            check(Some(&good.to_uppercase().replacen(
                &KEY.to_uppercase(),
                KEY,
                1
            ))),
            Ok(())
        );
    }

    #[test]
    fn signin_signs_user_data() {
        let data = r#"{"id":"7"}"#;
        let auth = format!("{KEY}:{}", sign(SECRET, &format!("1.2::user::{data}")));
        assert_eq!(verify_signin(KEY, SECRET, "1.2", data, Some(&auth)), Ok(()));
        assert_eq!(
            verify_signin(KEY, SECRET, "1.2", r#"{"id":"8"}"#, Some(&auth)),
            Err(AuthError::BadSignature)
        );
    }

    proptest! {
        #[test]
        fn hex_round_trips(bytes in proptest::collection::vec(any::<u8>(), 32)) {
            let mut back = [0u8; 32];
            prop_assert!(unhex(&hex(&bytes), &mut back));
            prop_assert_eq!(&back[..], &bytes[..]);
        }

        #[test]
        fn any_flipped_digit_fails(index in 0usize..64, socket in "[0-9]{1,9}\\.[0-9]{1,9}") {
            let message = format!("{socket}:private-x");
            let mut signature = sign(SECRET, &message).into_bytes();
            signature[index] = if signature[index] == b'0' { b'1' } else { b'0' };
            let signature = String::from_utf8(signature).unwrap();
            prop_assert_eq!(verify_hex(SECRET, &message, &signature), Err(AuthError::BadSignature));
        }
    }
}
