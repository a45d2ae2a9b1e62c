//! What every worker of a node shares about an app's channels: subscription counts, the
//! presence members, and the last event of each cache channel. One lock per app, held only
//! for a map update.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::presence::{Member, Members, PresenceError};

/// One app's channels on this node.
#[derive(Debug, Default)]
pub struct AppState {
    channels: HashMap<String, ChannelState>,
    /// Channels kept only for their cached event (no subscriber), at most
    /// [`MAX_IDLE_CACHED_CHANNELS`].
    idle_cached: usize,
}

/// Cache channels with no subscriber whose last event is kept, per app: past it, an event on
/// a vacant cache channel is not kept.
pub const MAX_IDLE_CACHED_CHANNELS: usize = 10_000;

#[derive(Debug, Default)]
struct ChannelState {
    subscriptions: usize,
    members: Members,
    /// The last event of a cache channel, encoded.
    cached: Option<String>,
}

/// What a subscription found.
#[derive(Debug, Default)]
pub struct Joined {
    /// The channel had no subscription before (`channel_occupied` is due).
    pub occupied: bool,
    /// The member is new to the channel (`member_added` is due).
    pub first: bool,
    /// `{ids, hash, count}` for a presence channel.
    pub presence: Option<serde_json::Value>,
    /// The cache channel's last event.
    pub cached: Option<String>,
}

/// What an unsubscription ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Left {
    /// The user's last subscription (`member_removed` is due).
    pub member: bool,
    /// The channel's last subscription (`channel_vacated` is due).
    pub vacated: bool,
}

/// A channel as the HTTP API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Subscriptions (connections) on this node.
    pub subscriptions: usize,
    /// Distinct presence members.
    pub users: usize,
}

impl AppState {
    /// Counts a subscription, joining `member` on presence channels.
    ///
    /// # Errors
    ///
    /// The presence channel is full; nothing is counted then.
    pub fn subscribe(
        &mut self,
        channel: &str,
        member: Option<Member>,
        max_members: usize,
    ) -> Result<Joined, PresenceError> {
        let state = self.channels.entry(channel.to_owned()).or_default();
        let idle = state.subscriptions == 0 && state.cached.is_some();
        let mut joined = Joined::default();
        if let Some(member) = member {
            match state.members.join(member, max_members) {
                Ok(first) => joined.first = first,
                Err(error) => {
                    if state.subscriptions == 0 && state.cached.is_none() {
                        self.channels.remove(channel);
                    }
                    return Err(error);
                }
            }
            joined.presence = Some(state.members.snapshot());
        }
        joined.occupied = state.subscriptions == 0;
        state.subscriptions += 1;
        joined.cached = state.cached.clone();
        self.idle_cached -= usize::from(idle);
        Ok(joined)
    }

    /// Counts an unsubscription (of `user_id`'s, on presence).
    pub fn unsubscribe(&mut self, channel: &str, user_id: Option<&str>) -> Left {
        let Some(state) = self.channels.get_mut(channel) else {
            return Left::default();
        };
        let left = Left {
            member: user_id.is_some_and(|id| state.members.leave(id)),
            vacated: state.subscriptions == 1,
        };
        state.subscriptions = state.subscriptions.saturating_sub(1);
        if state.subscriptions == 0 {
            if state.cached.is_some() && self.idle_cached < MAX_IDLE_CACHED_CHANNELS {
                // A vacated cache channel keeps its event for the next subscriber.
                state.members = Members::default();
                self.idle_cached += 1;
            } else {
                self.channels.remove(channel);
            }
        }
        left
    }

    /// Keeps `event` as the cache channel's last (on a vacant channel, while fewer than
    /// [`MAX_IDLE_CACHED_CHANNELS`] are kept).
    pub fn cache(&mut self, channel: &str, event: String) {
        if let Some(state) = self.channels.get_mut(channel) {
            state.cached = Some(event);
        } else if self.idle_cached < MAX_IDLE_CACHED_CHANNELS {
            self.idle_cached += 1;
            self.channels.insert(
                channel.to_owned(),
                ChannelState {
                    cached: Some(event),
                    ..ChannelState::default()
                },
            );
        }
    }

    /// A channel's counts, `None` when unoccupied.
    pub fn info(&self, channel: &str) -> Option<ChannelInfo> {
        let occupied = self.channels.get(channel).filter(|s| s.subscriptions > 0);
        occupied.map(|s| ChannelInfo {
            subscriptions: s.subscriptions,
            users: s.members.len(),
        })
    }

    /// Occupied channels whose name starts with `prefix`, sorted.
    pub fn channels(&self, prefix: &str) -> Vec<(String, ChannelInfo)> {
        let mut list: Vec<_> = self
            .channels
            .iter()
            .filter(|(name, s)| s.subscriptions > 0 && name.starts_with(prefix))
            .map(|(name, s)| {
                (
                    name.clone(),
                    ChannelInfo {
                        subscriptions: s.subscriptions,
                        users: s.members.len(),
                    },
                )
            })
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// `{ids, hash, count}` of a presence channel.
    pub fn snapshot(&self, channel: &str) -> serde_json::Value {
        match self.channels.get(channel) {
            Some(state) => state.members.snapshot(),
            None => Members::default().snapshot(),
        }
    }

    /// A presence channel's user ids.
    pub fn users(&self, channel: &str) -> Vec<String> {
        self.channels
            .get(channel)
            .map(|s| s.members.ids().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

/// Locks an app's state; a poisoned lock (a panic mid-update) is taken as it is, since every
/// update leaves the maps consistent before it can panic.
pub fn lock(state: &Mutex<AppState>) -> MutexGuard<'_, AppState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Option<Member> {
        Some(Member::parse(&format!(r#"{{"user_id":"{id}"}}"#), 2048).unwrap())
    }

    #[test]
    fn counts_subscriptions_and_members() {
        let mut app = AppState::default();
        let joined = app.subscribe("presence-a", member("1"), 100).unwrap();
        assert!(joined.first && joined.occupied);
        assert_eq!(joined.presence.unwrap()["count"], 1);
        let again = app.subscribe("presence-a", member("1"), 100).unwrap();
        assert!(!again.first && !again.occupied);
        assert_eq!(
            app.info("presence-a"),
            Some(ChannelInfo {
                subscriptions: 2,
                users: 1
            })
        );
        assert_eq!(app.unsubscribe("presence-a", Some("1")), Left::default());
        assert_eq!(
            app.unsubscribe("presence-a", Some("1")),
            Left {
                member: true,
                vacated: true
            }
        );
        assert_eq!(app.info("presence-a"), None, "vacated");
    }

    #[test]
    fn a_full_channel_counts_nothing() {
        let mut app = AppState::default();
        app.subscribe("presence-a", member("1"), 1).unwrap();
        assert!(app.subscribe("presence-a", member("2"), 1).is_err());
        assert_eq!(
            app.info("presence-a"),
            Some(ChannelInfo {
                subscriptions: 1,
                users: 1
            })
        );
        assert!(app.subscribe("presence-b", member("2"), 0).is_err());
        assert_eq!(app.info("presence-b"), None);
    }

    #[test]
    fn cache_keeps_the_last_event() {
        let mut app = AppState::default();
        app.cache("cache-a", "before".into());
        assert_eq!(app.info("cache-a"), None, "kept, not occupied");
        assert_eq!(
            app.subscribe("cache-a", None, 100)
                .unwrap()
                .cached
                .as_deref(),
            Some("before")
        );
        app.cache("cache-a", "one".into());
        app.cache("cache-a", "two".into());
        assert_eq!(
            app.subscribe("cache-a", None, 100)
                .unwrap()
                .cached
                .as_deref(),
            Some("two")
        );
        assert_eq!(
            app.channels("cache"),
            vec![(
                "cache-a".to_owned(),
                ChannelInfo {
                    subscriptions: 2,
                    users: 0
                }
            )]
        );
        assert!(app.channels("presence-").is_empty());
        app.unsubscribe("cache-a", None);
        app.unsubscribe("cache-a", None);
        assert_eq!(app.idle_cached, 1);
        assert_eq!(
            app.subscribe("cache-a", None, 100)
                .unwrap()
                .cached
                .as_deref(),
            Some("two")
        );
        assert_eq!(app.idle_cached, 0);
    }

    #[test]
    fn idle_cached_channels_are_bounded() {
        let mut app = AppState::default();
        for i in 0..MAX_IDLE_CACHED_CHANNELS + 5 {
            app.cache(&format!("cache-{i}"), "x".into());
        }
        assert_eq!(app.channels.len(), MAX_IDLE_CACHED_CHANNELS);
    }
}
