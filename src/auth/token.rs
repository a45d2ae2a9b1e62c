//! JSON Web Tokens (RFC 7519): the one algorithm the server is configured for, checked
//! against a clock the caller passes in.
//!
//! The signature is checked by the `jsonwebtoken` crate (its HMAC comparison is constant
//! time). A token whose header names any other algorithm, `none` included, is refused before
//! its signature is looked at. `exp` is required; `exp` and `nbf` are checked here, against
//! `now`, with [`LEEWAY_SECONDS`] of allowance for clocks that disagree.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::pattern::TopicPatterns;

/// Seconds a token is still accepted after its `exp` (and before its `nbf`): room for the
/// clocks of the server and the token's issuer to disagree a little, short enough that an
/// expired token is not useful for long.
pub const LEEWAY_SECONDS: u64 = 30;

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// When the token expires, in seconds since the Unix epoch.
    pub exp: u64,
    /// A short hash of `sub` (the user), for logs: the subject itself is never logged.
    pub subject: Option<SubjectHash>,
    /// The topics the bearer may subscribe to.
    pub subscribe: TopicPatterns,
    /// The topics the bearer may publish to.
    pub publish: TopicPatterns,
}

impl Claims {
    /// Whether the token has expired at `now` (seconds since the Unix epoch), leeway included.
    pub fn expired_at(&self, now: u64) -> bool {
        now > self.exp.saturating_add(LEEWAY_SECONDS)
    }
}

/// The first 8 bytes of SHA-256 of a token's `sub`, in hex: enough to follow one user
/// through the logs, not enough to read who it is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SubjectHash([u8; 8]);

impl SubjectHash {
    /// Hashes a subject.
    pub fn of(subject: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, subject.as_bytes());
        let mut short = [0; 8];
        short.copy_from_slice(&digest.as_ref()[..8]);
        Self(short)
    }
}

impl std::fmt::Display for SubjectHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for SubjectHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubjectHash({self})")
    }
}

/// Why a token was refused. Every variant is answered 401.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Past its `exp` (plus the leeway).
    #[error("token expired")]
    Expired,
    /// Before its `nbf` (minus the leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// Not a JWT, another algorithm than the configured one, a bad signature, or claims of
    /// the wrong shape (`exp` missing included).
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The key that checks tokens could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// An empty `--jwt-secret`.
    #[error("--jwt-secret must not be empty")]
    EmptySecret,
    /// The public key file cannot be read.
    #[error("cannot read --jwt-public-key {path}: {reason}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why, as the system said it.
        reason: String,
    },
    /// The file is not a PEM public key of a supported kind.
    #[error("--jwt-public-key {path} is not a PEM public key for RS256 (RSA), ES256 (EC P-256) or EdDSA (Ed25519)")]
    Unsupported {
        /// The file.
        path: std::path::PathBuf,
    },
}

/// Checks tokens signed with one key and one algorithm.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret for HS256: only the algorithm is shown.
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// HS256 with a shared secret.
    ///
    /// # Errors
    ///
    /// An empty secret.
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        let key = DecodingKey::from_secret(secret).map_err(|_| KeyError::EmptySecret)?;
        Ok(Self::with(key, Algorithm::HS256))
    }

    /// RS256, ES256 or EdDSA, chosen by the kind of the PEM public key (`BEGIN PUBLIC KEY`,
    /// or `BEGIN RSA PUBLIC KEY`) read from `path`.
    ///
    /// # Errors
    ///
    /// The file cannot be read or holds no supported public key.
    pub fn from_public_key_file(path: &std::path::Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|error| KeyError::Read {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        Self::from_public_key_pem(&pem).ok_or_else(|| KeyError::Unsupported {
            path: path.to_owned(),
        })
    }

    /// As [`from_public_key_file`](Self::from_public_key_file), from the PEM text.
    pub fn from_public_key_pem(pem: &[u8]) -> Option<Self> {
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Some(Self::with(key, Algorithm::EdDSA));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Some(Self::with(key, Algorithm::ES256));
        }
        DecodingKey::from_rsa_pem(pem)
            .ok()
            .map(|key| Self::with(key, Algorithm::RS256))
    }

    fn with(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        // Only the configured algorithm: `Validation::new` lists exactly that one.
        validation.algorithms = vec![algorithm];
        validation.required_spec_claims = ["exp".to_owned()].into_iter().collect();
        // Time is checked by `verify` against the caller's clock, not the crate's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Self { key, validation }
    }

    /// The algorithm tokens must be signed with, as the `alg` header names it.
    pub fn algorithm(&self) -> &'static str {
        match self.validation.algorithms.first() {
            Some(Algorithm::HS256) => "HS256",
            Some(Algorithm::RS256) => "RS256",
            Some(Algorithm::ES256) => "ES256",
            Some(Algorithm::EdDSA) => "EdDSA",
            _ => "other",
        }
    }

    /// Checks a token at `now` (seconds since the Unix epoch) and returns its claims.
    ///
    /// # Errors
    ///
    /// A [`TokenError`]: the token is malformed, signed otherwise, expired or not valid yet.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|error| TokenError::Invalid(error.to_string()))?;
        let raw = data.claims;
        let claims = Claims {
            exp: raw.exp,
            subject: raw.sub.as_deref().map(SubjectHash::of),
            subscribe: TopicPatterns::parse(raw.subscribe.iter().map(String::as_str)),
            publish: TopicPatterns::parse(raw.publish.iter().map(String::as_str)),
        };
        if claims.expired_at(now) {
            return Err(TokenError::Expired);
        }
        if raw
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECONDS))
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

/// The claims as they are written in the token.
#[derive(Deserialize)]
struct RawClaims {
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{encode, EncodingKey, Header};

    pub(crate) const NOW: u64 = 1_800_000_000;

    pub(crate) fn hs256(secret: &[u8], claims: &serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret).expect("a non-empty test secret"),
        )
        .expect("HS256 signs")
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"exp": NOW + 60, "sub": "alice", "subscribe": ["news.*"], "publish": ["chat"]})
    }

    #[test]
    fn a_good_token_gives_its_claims() {
        let verifier = Verifier::hs256(b"secret").expect("key");
        let claims = verifier
            .verify(&hs256(b"secret", &claims()), NOW)
            .expect("valid");
        assert_eq!(claims.exp, NOW + 60);
        assert_eq!(claims.subject, Some(SubjectHash::of("alice")));
        assert!(claims.subscribe.covers("news.eu"));
        assert!(!claims.subscribe.covers("newsroom"));
        assert!(claims.publish.covers("chat"));
        // The subject is logged as 16 hex digits, never as itself.
        let shown = SubjectHash::of("alice").to_string();
        assert_eq!(shown.len(), 16);
        assert!(!shown.contains("alice"));
    }

    #[test]
    fn forged_expired_and_shapeless_tokens_are_refused() {
        let verifier = Verifier::hs256(b"secret").expect("key");
        let forged = hs256(b"another secret", &claims());
        assert!(matches!(
            verifier.verify(&forged, NOW),
            Err(TokenError::Invalid(_))
        ));
        // Within the leeway an expired token still passes; past it, not.
        let token = hs256(b"secret", &claims());
        assert!(verifier.verify(&token, NOW + 60 + LEEWAY_SECONDS).is_ok());
        assert_eq!(
            verifier.verify(&token, NOW + 61 + LEEWAY_SECONDS),
            Err(TokenError::Expired)
        );
        let no_exp = hs256(b"secret", &serde_json::json!({"subscribe": ["a"]}));
        assert!(matches!(
            verifier.verify(&no_exp, NOW),
            Err(TokenError::Invalid(_))
        ));
        let early = hs256(
            b"secret",
            &serde_json::json!({"exp": NOW + 600, "nbf": NOW + 300}),
        );
        assert_eq!(verifier.verify(&early, NOW), Err(TokenError::NotYetValid));
        for garbage in ["", "a.b", "a.b.c", "....", "ey.ey.ey"] {
            assert!(verifier.verify(garbage, NOW).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let verifier = Verifier::hs256(b"secret").expect("key");
        let payload = b64(claims().to_string().as_bytes());
        let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
        assert!(matches!(
            verifier.verify(&none, NOW),
            Err(TokenError::Invalid(_))
        ));
        // HS384 with the right secret is still not the configured algorithm.
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &claims(),
            &EncodingKey::from_secret(b"secret").expect("key"),
        )
        .expect("signs");
        assert!(matches!(
            verifier.verify(&hs384, NOW),
            Err(TokenError::Invalid(_))
        ));
        // An RS256 header on an HMAC signature made with the public key as the secret (the
        // classic confusion attack) is refused by a verifier configured for RS256.
        let public = include_bytes!("testdata/rsa_public.pem");
        let rsa = Verifier::from_public_key_pem(public).expect("an RSA public key");
        assert_eq!(rsa.algorithm(), "RS256");
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(public).expect("key"),
        )
        .expect("signs");
        assert!(matches!(
            rsa.verify(&confused, NOW),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn public_keys_choose_their_algorithm() {
        let ed = Verifier::from_public_key_pem(include_bytes!("testdata/ed25519_public.pem"))
            .expect("an Ed25519 key");
        assert_eq!(ed.algorithm(), "EdDSA");
        let ec = Verifier::from_public_key_pem(include_bytes!("testdata/p256_public.pem"))
            .expect("a P-256 key");
        assert_eq!(ec.algorithm(), "ES256");
        let token = encode(
            &Header::new(Algorithm::EdDSA),
            &claims(),
            &EncodingKey::from_ed_pem(include_bytes!("testdata/ed25519_private.pem")).expect("key"),
        )
        .expect("signs");
        assert!(ed.verify(&token, NOW).is_ok());
        assert!(ec.verify(&token, NOW).is_err());
        assert!(Verifier::from_public_key_pem(b"not a key").is_none());
    }
}
