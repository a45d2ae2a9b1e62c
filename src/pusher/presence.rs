//! A presence channel's members: one entry per `user_id`, however many connections (tabs)
//! the user has subscribed with, so that `member_added` fires on a user's first subscription
//! and `member_removed` on their last.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// The longest `user_id`, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;

/// What a subscription's `channel_data` says about its member.
#[derive(Clone, Debug)]
pub struct Member {
    /// `user_id`, as a string (a number is written in decimal).
    pub user_id: String,
    /// `user_info`, as given (`null` when absent).
    pub user_info: Box<RawValue>,
}

/// Why a presence subscription was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// `channel_data` is absent, not JSON, or has no string or number `user_id` of 1 to
    /// [`MAX_USER_ID_BYTES`] bytes.
    #[error("channel_data must be JSON with a user_id of 1 to 128 bytes")]
    BadChannelData,
    /// `user_info` is larger than the app's limit.
    #[error("user_info is {len} bytes, over the limit of {max}")]
    InfoTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The channel has the app's maximum of members, and this user is not one.
    #[error("the channel has {0} members, the limit")]
    Full(usize),
}

impl Member {
    /// Reads `channel_data`, refusing a `user_info` over `max_info_bytes`.
    ///
    /// # Errors
    ///
    /// See [`PresenceError`].
    pub fn parse(channel_data: &str, max_info_bytes: usize) -> Result<Self, PresenceError> {
        #[derive(serde::Deserialize)]
        struct Data<'a> {
            #[serde(borrow)]
            user_id: Option<&'a RawValue>,
            user_info: Option<Box<RawValue>>,
        }
        let data: Data<'_> =
            serde_json::from_str(channel_data).map_err(|_| PresenceError::BadChannelData)?;
        let user_id = match serde_json::from_str::<serde_json::Value>(
            data.user_id.ok_or(PresenceError::BadChannelData)?.get(),
        ) {
            Ok(serde_json::Value::String(id))
                if !id.is_empty() && id.len() <= MAX_USER_ID_BYTES =>
            {
                id
            }
            Ok(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(PresenceError::BadChannelData),
        };
        let user_info = data.user_info.unwrap_or_else(null);
        if user_info.get().len() > max_info_bytes {
            return Err(PresenceError::InfoTooLarge {
                len: user_info.get().len(),
                max: max_info_bytes,
            });
        }
        Ok(Self { user_id, user_info })
    }
}

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        self.user_id == other.user_id && self.user_info.get() == other.user_info.get()
    }
}

impl Eq for Member {}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

/// The members of one presence channel.
#[derive(Debug, Default)]
pub struct Members {
    /// user_id → (info of the latest subscription, its subscriptions).
    users: BTreeMap<String, (Box<RawValue>, usize)>,
}

impl Members {
    /// Adds a subscription. Returns whether it is the user's first (then `member_added` is
    /// due). The latest subscription's info replaces the user's.
    ///
    /// # Errors
    ///
    /// [`PresenceError::Full`] for a new user when `max_members` are present.
    pub fn join(&mut self, member: Member, max_members: usize) -> Result<bool, PresenceError> {
        if let Some((info, count)) = self.users.get_mut(&member.user_id) {
            *info = member.user_info;
            *count += 1;
            return Ok(false);
        }
        if self.users.len() >= max_members {
            return Err(PresenceError::Full(max_members));
        }
        self.users.insert(member.user_id, (member.user_info, 1));
        Ok(true)
    }

    /// Removes a subscription of `user_id`. Returns whether it was the user's last (then
    /// `member_removed` is due); false for a user not present.
    pub fn leave(&mut self, user_id: &str) -> bool {
        let Some((_, count)) = self.users.get_mut(user_id) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.users.remove(user_id);
            return true;
        }
        false
    }

    /// Distinct users present.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether nobody is present.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The user ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Whether `user_id` is present.
    pub fn contains(&self, user_id: &str) -> bool {
        self.users.contains_key(user_id)
    }

    /// Each user with its info, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.users
            .iter()
            .map(|(id, (info, _))| (id.as_str(), &**info))
    }

    /// `{ids, hash, count}`, as `subscription_succeeded` carries it.
    pub fn snapshot(&self) -> serde_json::Value {
        snapshot(self.iter())
    }
}

/// `{ids, hash, count}` of these members (distinct ids, in order).
pub fn snapshot<'a>(members: impl Iterator<Item = (&'a str, &'a RawValue)>) -> serde_json::Value {
    let mut ids = Vec::new();
    let mut hash = serde_json::Map::new();
    for (id, info) in members {
        let info = serde_json::from_str(info.get()).unwrap_or(serde_json::Value::Null);
        ids.push(id.to_owned());
        hash.insert(id.to_owned(), info);
    }
    serde_json::json!({
        "ids": ids,
        "hash": hash,
        "count": ids.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str) -> Member {
        Member::parse(
            &format!(r#"{{"user_id":"{id}","user_info":{{"n":"{id}"}}}}"#),
            2048,
        )
        .unwrap()
    }

    #[test]
    fn parses_channel_data() {
        let m = Member::parse(
            r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#,
            2048,
        )
        .unwrap();
        assert_eq!(m.user_id, "10");
        assert_eq!(m.user_info.get(), r#"{"name":"Mr. Channels"}"#);
        assert_eq!(
            Member::parse(r#"{"user_id":"a"}"#, 2048)
                .unwrap()
                .user_info
                .get(),
            "null"
        );
        let long = format!(r#"{{"user_id":"{}"}}"#, "u".repeat(MAX_USER_ID_BYTES + 1));
        let longest = format!(r#"{{"user_id":"{}"}}"#, "u".repeat(MAX_USER_ID_BYTES));
        assert!(Member::parse(&longest, 2048).is_ok());
        assert_eq!(
            Member::parse(&long, 2048),
            Err(PresenceError::BadChannelData)
        );
        for bad in [
            "",
            "{}",
            r#"{"user_id":""}"#,
            r#"{"user_id":[1]}"#,
            r#"{"user_id":null}"#,
        ] {
            assert_eq!(
                Member::parse(bad, 2048),
                Err(PresenceError::BadChannelData),
                "{bad}"
            );
        }
        let big = format!(r#"{{"user_id":"a","user_info":"{}"}}"#, "x".repeat(2047));
        assert_eq!(
            Member::parse(&big, 2048),
            Err(PresenceError::InfoTooLarge {
                len: 2049,
                max: 2048
            })
        );
    }

    #[test]
    fn a_user_in_two_tabs_is_one_member() {
        let mut members = Members::default();
        assert_eq!(members.join(member("a"), 100), Ok(true));
        assert_eq!(members.join(member("a"), 100), Ok(false), "second tab");
        assert_eq!(members.len(), 1);
        assert!(!members.leave("a"), "one tab left");
        assert!(members.leave("a"), "last tab");
        assert!(!members.leave("a"), "gone already");
        assert!(members.is_empty());
    }

    #[test]
    fn the_member_cap_holds_for_new_users_only() {
        let mut members = Members::default();
        assert_eq!(members.join(member("a"), 2), Ok(true));
        assert_eq!(members.join(member("b"), 2), Ok(true));
        assert_eq!(members.join(member("c"), 2), Err(PresenceError::Full(2)));
        assert_eq!(
            members.join(member("a"), 2),
            Ok(false),
            "a present user's tab"
        );
        let snapshot = members.snapshot();
        assert_eq!(snapshot["count"], 2);
        assert_eq!(snapshot["ids"], serde_json::json!(["a", "b"]));
        assert_eq!(snapshot["hash"]["b"], serde_json::json!({"n":"b"}));
    }

    proptest! {
        /// Against a model that counts tabs per user: added and removed fire exactly on the
        /// zero crossings, and the member count is the users with a tab.
        #[test]
        fn added_and_removed_fire_on_first_and_last(ops in proptest::collection::vec((any::<bool>(), 0u8..5), 0..200)) {
            let mut members = Members::default();
            let mut tabs = [0usize; 5];
            for (join, user) in ops {
                let id = user.to_string();
                if join {
                    prop_assert_eq!(members.join(member(&id), 100), Ok(tabs[usize::from(user)] == 0));
                    tabs[usize::from(user)] += 1;
                } else {
                    let last = tabs[usize::from(user)] == 1;
                    prop_assert_eq!(members.leave(&id), last);
                    tabs[usize::from(user)] = tabs[usize::from(user)].saturating_sub(1);
                }
                prop_assert_eq!(members.len(), tabs.iter().filter(|&&t| t > 0).count());
            }
        }
    }
}
