//! Channel names and what their prefix makes them: public, private, presence, encrypted, and
//! the cache variants.

/// The longest channel name accepted, in bytes (every allowed character is one byte).
pub const MAX_CHANNEL_NAME_BYTES: usize = 200;

/// What a channel's prefix makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// No prefix: anyone may subscribe; clients may not publish.
    Public,
    /// `private-`: subscribing needs a signature from the app's auth endpoint.
    Private,
    /// `private-encrypted-`: private, and the payloads are end-to-end encrypted; the server
    /// relays them as they come.
    PrivateEncrypted,
    /// `presence-`: private, with a member list shared by every subscriber.
    Presence,
}

/// A channel name that passed [`Channel::parse`]: at most 200 bytes of Pusher's character
/// set, `A-Z a-z 0-9 _ - = @ , . ;`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channel<'a> {
    name: &'a str,
    kind: ChannelKind,
    cache: bool,
}

/// Why a channel name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The name is empty.
    #[error("the channel name is empty")]
    Empty,
    /// The name is longer than [`MAX_CHANNEL_NAME_BYTES`].
    #[error("the channel name is {0} bytes long, over the limit of 200")]
    TooLong(usize),
    /// The name holds a character outside Pusher's set.
    #[error("the channel name holds a character outside A-Z a-z 0-9 _ - = @ , . ;")]
    BadCharacter,
}

impl<'a> Channel<'a> {
    /// Checks a name and finds its kind.
    ///
    /// # Errors
    ///
    /// An empty or overlong name, or a character outside the set.
    pub fn parse(name: &'a str) -> Result<Self, ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::Empty);
        }
        if name.len() > MAX_CHANNEL_NAME_BYTES {
            return Err(ChannelError::TooLong(name.len()));
        }
        if !name.bytes().all(allowed) {
            return Err(ChannelError::BadCharacter);
        }
        let (kind, rest) = if let Some(rest) = name.strip_prefix("private-encrypted-") {
            (ChannelKind::PrivateEncrypted, rest)
        } else if let Some(rest) = name.strip_prefix("private-") {
            (ChannelKind::Private, rest)
        } else if let Some(rest) = name.strip_prefix("presence-") {
            (ChannelKind::Presence, rest)
        } else {
            (ChannelKind::Public, name)
        };
        // `cache-x`, `private-cache-x`, `presence-cache-x` and `private-encrypted-cache-x`.
        let cache = rest.starts_with("cache-");
        Ok(Self { name, kind, cache })
    }

    /// The name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// What the prefix makes it.
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// Whether subscribing needs a signature (every kind but public).
    pub fn needs_auth(&self) -> bool {
        self.kind != ChannelKind::Public
    }

    /// Whether clients may send `client-*` events on it (private and presence kinds).
    pub fn takes_client_events(&self) -> bool {
        self.needs_auth()
    }

    /// Whether it is a presence channel.
    pub fn is_presence(&self) -> bool {
        self.kind == ChannelKind::Presence
    }

    /// Whether the server keeps its last event for new subscribers (`cache-` variants).
    pub fn is_cache(&self) -> bool {
        self.cache
    }
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefixes_give_kinds() {
        let kind = |n| Channel::parse(n).map(|c| (c.kind(), c.is_cache()));
        assert_eq!(kind("news"), Ok((ChannelKind::Public, false)));
        assert_eq!(kind("private-a"), Ok((ChannelKind::Private, false)));
        assert_eq!(kind("presence-a"), Ok((ChannelKind::Presence, false)));
        assert_eq!(
            kind("private-encrypted-a"),
            Ok((ChannelKind::PrivateEncrypted, false))
        );
        assert_eq!(kind("cache-a"), Ok((ChannelKind::Public, true)));
        assert_eq!(kind("private-cache-a"), Ok((ChannelKind::Private, true)));
        assert_eq!(kind("presence-cache-a"), Ok((ChannelKind::Presence, true)));
        assert_eq!(
            kind("private-encrypted-cache-a"),
            Ok((ChannelKind::PrivateEncrypted, true))
        );
        // A prefix without its dash is a public name.
        assert_eq!(kind("privatea"), Ok((ChannelKind::Public, false)));
        assert!(!Channel::parse("news").unwrap().takes_client_events());
        assert!(Channel::parse("presence-a").unwrap().takes_client_events());
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(Channel::parse(""), Err(ChannelError::Empty));
        assert_eq!(Channel::parse("a b"), Err(ChannelError::BadCharacter));
        assert_eq!(
            Channel::parse("#server-to-user-1"),
            Err(ChannelError::BadCharacter)
        );
        assert_eq!(Channel::parse("é"), Err(ChannelError::BadCharacter));
        assert!(Channel::parse(&"a".repeat(200)).is_ok());
        assert_eq!(
            Channel::parse(&"a".repeat(201)),
            Err(ChannelError::TooLong(201))
        );
    }

    proptest! {
        #[test]
        fn accepts_exactly_the_charset(name in "\\PC{0,210}") {
            let ok = !name.is_empty() && name.len() <= 200 && name.bytes().all(allowed);
            prop_assert_eq!(Channel::parse(&name).is_ok(), ok);
        }

        #[test]
        fn valid_names_round_trip(name in "[A-Za-z0-9_=@,.;-]{1,200}") {
            prop_assert_eq!(Channel::parse(&name).unwrap().name(), name.as_str());
        }
    }
}
