//! What every worker of a node shares about an app's channels: subscription counts, the
//! presence members, and the last event of each cache channel. One lock per app, held only
//! for a map update.
//!
//! With a broker, the state also holds what the other nodes hold ([`RemoteView`]), and every
//! answer (members, counts, the first and last of a member or a channel) is the cluster's:
//! this node's own channels merged with the others'. A change from another node returns the
//! [`Change`]s it makes to that merged view.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use serde_json::value::RawValue;

use super::cluster::{Bounds, NodeId, Refused, RemoteView, SyncChannel};
use super::presence::{self, Member, Members, PresenceError};

/// One app's channels on this node.
#[derive(Debug, Default)]
pub struct AppState {
    channels: HashMap<String, ChannelState>,
    /// Channels kept only for their cached event (no subscriber), at most
    /// [`MAX_IDLE_CACHED_CHANNELS`].
    idle_cached: usize,
    /// What the other nodes hold (empty without a broker).
    remote: RemoteView,
    /// With a broker: channels whose count changed since the last beat, at most
    /// [`MAX_DIRTY`] (past it, `dirty_overflow` asks for a whole sync instead).
    clustered: bool,
    dirty: HashSet<String>,
    dirty_overflow: bool,
}

/// Channels whose changed counts are remembered between two beats, per app.
pub const MAX_DIRTY: usize = 100_000;

/// A change to the cluster's view of a channel, made by another node (or its death).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A user is now present (`member_added`).
    MemberAdded {
        /// The channel.
        channel: String,
        /// The user.
        user_id: String,
        /// Its info, as JSON text.
        info: String,
    },
    /// A user is gone from every node (`member_removed`).
    MemberRemoved {
        /// The channel.
        channel: String,
        /// The user.
        user_id: String,
    },
    /// The channel has its first subscription in the cluster (`channel_occupied`).
    Occupied(String),
    /// The channel lost its last subscription in the cluster (`channel_vacated`).
    Vacated(String),
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
    /// The channel had no subscription before, in the cluster (`channel_occupied` is due).
    pub occupied: bool,
    /// The member is new to the channel, in the cluster (`member_added` is due).
    pub first: bool,
    /// The channel had no subscription on this node before (the others are told at once).
    pub local_occupied: bool,
    /// The member is new to the channel on this node (the others are told).
    pub local_first: bool,
    /// `{ids, hash, count}` for a presence channel.
    pub presence: Option<serde_json::Value>,
    /// The cache channel's last event.
    pub cached: Option<String>,
}

/// What an unsubscription ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Left {
    /// The user's last subscription in the cluster (`member_removed` is due).
    pub member: bool,
    /// The channel's last subscription in the cluster (`channel_vacated` is due).
    pub vacated: bool,
    /// The user's last subscription on this node (the others are told).
    pub local_member: bool,
    /// The channel's last subscription on this node (the others are told at once).
    pub local_vacated: bool,
}

/// A channel as the HTTP API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Subscriptions (connections), on every node.
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
        if let Some(member) = &member {
            // The cap is the cluster's: distinct users on every node.
            let present = self
                .channels
                .get(channel)
                .is_some_and(|s| s.members.contains(&member.user_id))
                || self.remote.has_member(channel, &member.user_id);
            if !present && self.member_count(channel) >= max_members {
                return Err(PresenceError::Full(max_members));
            }
        }
        let with_member = member.is_some();
        let state = self.channels.entry(channel.to_owned()).or_default();
        let idle = state.subscriptions == 0 && state.cached.is_some();
        let mut joined = Joined::default();
        if let Some(member) = member {
            let user_id = member.user_id.clone();
            match state.members.join(member, max_members) {
                Ok(first) => {
                    joined.local_first = first;
                    joined.first = first && !self.remote.has_member(channel, &user_id);
                }
                Err(error) => {
                    if state.subscriptions == 0 && state.cached.is_none() {
                        self.channels.remove(channel);
                    }
                    return Err(error);
                }
            }
        }
        joined.local_occupied = state.subscriptions == 0;
        joined.occupied = joined.local_occupied && self.remote.subs(channel) == 0;
        state.subscriptions += 1;
        joined.cached = state.cached.clone();
        self.idle_cached -= usize::from(idle);
        if with_member {
            joined.presence = Some(self.snapshot(channel));
        }
        self.touch(channel);
        Ok(joined)
    }

    /// Counts an unsubscription (of `user_id`'s, on presence).
    pub fn unsubscribe(&mut self, channel: &str, user_id: Option<&str>) -> Left {
        let Some(state) = self.channels.get_mut(channel) else {
            return Left::default();
        };
        let local_member = user_id.is_some_and(|id| state.members.leave(id));
        let local_vacated = state.subscriptions == 1;
        let left = Left {
            member: local_member && user_id.is_some_and(|id| !self.remote.has_member(channel, id)),
            vacated: local_vacated && self.remote.subs(channel) == 0,
            local_member,
            local_vacated,
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
        self.touch(channel);
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

    /// A channel's counts in the cluster, `None` when unoccupied.
    pub fn info(&self, channel: &str) -> Option<ChannelInfo> {
        let subscriptions = self
            .local_subs(channel)
            .saturating_add(self.remote.subs(channel));
        (subscriptions > 0).then(|| ChannelInfo {
            subscriptions,
            users: self.member_count(channel),
        })
    }

    /// Channels occupied in the cluster whose name starts with `prefix`, sorted.
    pub fn channels(&self, prefix: &str) -> Vec<(String, ChannelInfo)> {
        let local = self
            .channels
            .iter()
            .filter(|(_, s)| s.subscriptions > 0)
            .map(|(name, _)| name.as_str());
        let names: BTreeSet<&str> = local
            .chain(self.remote.occupied())
            .filter(|name| name.starts_with(prefix))
            .collect();
        names
            .into_iter()
            .filter_map(|name| Some((name.to_owned(), self.info(name)?)))
            .collect()
    }

    /// `{ids, hash, count}` of a presence channel, in the cluster.
    pub fn snapshot(&self, channel: &str) -> serde_json::Value {
        presence::snapshot(self.members(channel).into_iter())
    }

    /// A presence channel's user ids, in the cluster.
    pub fn users(&self, channel: &str) -> Vec<String> {
        self.members(channel)
            .into_keys()
            .map(str::to_owned)
            .collect()
    }

    /// The channel's members in the cluster: each user once, with this node's info first.
    fn members<'a>(&'a self, channel: &'a str) -> BTreeMap<&'a str, &'a RawValue> {
        let mut members: BTreeMap<&str, &RawValue> = BTreeMap::new();
        if let Some(state) = self.channels.get(channel) {
            members.extend(state.members.iter());
        }
        for (id, info) in self.remote.members(channel) {
            members.entry(id).or_insert(info);
        }
        members
    }

    fn member_count(&self, channel: &str) -> usize {
        if self.remote.members(channel).next().is_none() {
            return self.channels.get(channel).map_or(0, |s| s.members.len());
        }
        self.members(channel).len()
    }

    fn local_subs(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |s| s.subscriptions)
    }

    // ---- across nodes ----

    /// With a broker: remembers which counts changed, for the next beat.
    pub fn set_clustered(&mut self) {
        self.clustered = true;
    }

    fn touch(&mut self, channel: &str) {
        if !self.clustered || self.dirty_overflow {
            return;
        }
        if self.dirty.len() < MAX_DIRTY || self.dirty.contains(channel) {
            self.dirty.insert(channel.to_owned());
        } else {
            self.dirty_overflow = true;
            self.dirty = HashSet::new();
        }
    }

    /// This node's count of `channel`, as the others are told.
    pub fn local_count(&self, channel: &str) -> usize {
        self.local_subs(channel)
    }

    /// The counts that changed since the last call, `(channel, subscriptions here)`; `None`
    /// when too many changed to remember (then a whole sync is due).
    pub fn take_dirty(&mut self) -> Option<Vec<(String, usize)>> {
        if std::mem::take(&mut self.dirty_overflow) {
            return None;
        }
        let dirty = std::mem::take(&mut self.dirty);
        Some(
            dirty
                .into_iter()
                .map(|name| {
                    let subs = self.local_subs(&name);
                    (name, subs)
                })
                .collect(),
        )
    }

    /// This node's whole state of the app: each occupied channel with its members.
    pub fn sync_channels(&self) -> Vec<SyncChannel> {
        self.channels
            .iter()
            .filter(|(_, s)| s.subscriptions > 0)
            .map(|(name, s)| SyncChannel {
                channel: name.clone(),
                subs: s.subscriptions,
                members: s
                    .members
                    .iter()
                    .map(|(id, info)| (id.to_owned(), info.get().to_owned()))
                    .collect(),
            })
            .collect()
    }

    /// `node` holds `subs` subscriptions to `channel`.
    pub fn remote_count(
        &mut self,
        node: NodeId,
        channel: &str,
        subs: usize,
    ) -> (Vec<Change>, Result<(), Refused>) {
        self.tracked(&[channel.to_owned()], |r| r.count(node, channel, subs))
    }

    /// `user_id` joined `channel` on `node`.
    pub fn remote_join(
        &mut self,
        node: NodeId,
        channel: &str,
        user_id: &str,
        info: &str,
        bounds: Bounds,
    ) -> (Vec<Change>, Result<(), Refused>) {
        self.tracked(&[channel.to_owned()], |r| {
            r.join(node, channel, user_id, info, bounds)
        })
    }

    /// `user_id` left `channel` on `node`.
    pub fn remote_leave(&mut self, node: NodeId, channel: &str, user_id: &str) -> Vec<Change> {
        self.tracked(&[channel.to_owned()], |r| {
            r.leave(node, channel, user_id);
        })
        .0
    }

    /// A part of `node`'s sync round `round`; with `last`, its channels not listed in the
    /// round are dropped. Returns the changes and how many entries were over a bound.
    pub fn remote_sync(
        &mut self,
        node: NodeId,
        round: u64,
        channels: Vec<SyncChannel>,
        last: bool,
        bounds: Bounds,
    ) -> (Vec<Change>, usize) {
        let mut touched: Vec<String> = channels.iter().map(|c| c.channel.clone()).collect();
        touched.truncate(super::cluster::MAX_REMOTE_CHANNELS);
        if last {
            // What the round's end drops, computed on the view as it will be.
            let listed: HashSet<&str> = touched.iter().map(String::as_str).collect();
            let drops: Vec<String> = self
                .remote
                .sync_drops(node, round)
                .into_iter()
                .filter(|c| !listed.contains(c.as_str()))
                .collect();
            touched.extend(drops);
        }
        self.tracked(&touched, |r| {
            let refused = r.sync(node, round, channels, bounds);
            if last {
                r.end_sync(node, round);
            }
            refused
        })
    }

    /// `node` is dead: everything it held goes.
    pub fn drop_node(&mut self, node: NodeId) -> Vec<Change> {
        let touched = self.remote.node_channels(node);
        self.tracked(&touched, |r| {
            r.drop_node(node);
        })
        .0
    }

    /// Runs `change` on the remote view and returns how the cluster's view of `channels`
    /// changed.
    fn tracked<T>(
        &mut self,
        channels: &[String],
        change: impl FnOnce(&mut RemoteView) -> T,
    ) -> (Vec<Change>, T) {
        let before: Vec<(bool, BTreeSet<String>)> = channels.iter().map(|c| self.seen(c)).collect();
        let result = change(&mut self.remote);
        let mut changes = Vec::new();
        for (channel, (occupied, users)) in channels.iter().zip(before) {
            let (now_occupied, now_users) = self.seen(channel);
            if !occupied && now_occupied {
                changes.push(Change::Occupied(channel.clone()));
            }
            let members = self.members(channel);
            for user_id in now_users.difference(&users) {
                let info = members.get(user_id.as_str()).map_or("null", |i| i.get());
                changes.push(Change::MemberAdded {
                    channel: channel.clone(),
                    user_id: user_id.clone(),
                    info: info.to_owned(),
                });
            }
            for user_id in users.difference(&now_users) {
                changes.push(Change::MemberRemoved {
                    channel: channel.clone(),
                    user_id: user_id.clone(),
                });
            }
            if occupied && !now_occupied {
                changes.push(Change::Vacated(channel.clone()));
            }
        }
        (changes, result)
    }

    /// Whether `channel` is occupied in the cluster, and its users.
    fn seen(&self, channel: &str) -> (bool, BTreeSet<String>) {
        let occupied = self.local_subs(channel) > 0 || self.remote.subs(channel) > 0;
        let users = self
            .members(channel)
            .into_keys()
            .map(str::to_owned)
            .collect();
        (occupied, users)
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
                vacated: true,
                local_member: true,
                local_vacated: true,
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

    const BOUNDS: Bounds = Bounds {
        max_members: 100,
        max_info_bytes: 2048,
    };

    #[test]
    fn a_user_on_two_nodes_is_one_member() {
        let mut app = AppState::default();
        app.set_clustered();
        // Node 7 has the user first.
        let (changes, ok) = app.remote_join(7, "presence-a", "u", r#"{"n":1}"#, BOUNDS);
        ok.unwrap();
        assert_eq!(
            changes,
            vec![Change::MemberAdded {
                channel: "presence-a".into(),
                user_id: "u".into(),
                info: r#"{"n":1}"#.into()
            }]
        );
        let (changes, _) = app.remote_count(7, "presence-a", 1);
        assert_eq!(changes, vec![Change::Occupied("presence-a".into())]);
        let joined = app.subscribe("presence-a", member("u"), 100).unwrap();
        assert!(joined.local_first && joined.local_occupied);
        assert!(!joined.first && !joined.occupied, "known from node 7");
        assert_eq!(joined.presence.unwrap()["count"], 1);
        assert_eq!(
            app.info("presence-a"),
            Some(ChannelInfo {
                subscriptions: 2,
                users: 1
            })
        );
        let left = app.unsubscribe("presence-a", Some("u"));
        assert!(left.local_member && left.local_vacated);
        assert!(!left.member && !left.vacated, "still on node 7");
        assert_eq!(
            app.drop_node(7),
            vec![
                Change::MemberRemoved {
                    channel: "presence-a".into(),
                    user_id: "u".into()
                },
                Change::Vacated("presence-a".into())
            ]
        );
        assert_eq!(app.info("presence-a"), None);
        assert_eq!(app.take_dirty().unwrap(), vec![("presence-a".into(), 0)]);
        assert_eq!(app.take_dirty().unwrap(), vec![]);
    }

    #[test]
    fn the_member_cap_counts_every_node() {
        let mut app = AppState::default();
        app.remote_join(7, "presence-a", "a", "null", BOUNDS)
            .1
            .unwrap();
        app.remote_join(8, "presence-a", "b", "null", BOUNDS)
            .1
            .unwrap();
        assert_eq!(
            app.subscribe("presence-a", member("c"), 2).unwrap_err(),
            PresenceError::Full(2)
        );
        assert!(
            app.subscribe("presence-a", member("a"), 2).is_ok(),
            "present"
        );
        assert_eq!(app.users("presence-a"), vec!["a", "b"]);
        assert_eq!(
            app.channels("presence-"),
            vec![(
                "presence-a".to_owned(),
                ChannelInfo {
                    subscriptions: 1,
                    users: 2
                }
            )]
        );
    }

    #[test]
    fn a_sync_brings_a_node_up_to_date() {
        let mut app = AppState::default();
        app.remote_join(7, "presence-old", "x", "null", BOUNDS)
            .1
            .unwrap();
        let channels = vec![SyncChannel {
            channel: "presence-a".into(),
            subs: 2,
            members: vec![("u".into(), "null".into())],
        }];
        let (changes, refused) = app.remote_sync(7, 1, channels, true, BOUNDS);
        assert_eq!(refused, 0);
        assert_eq!(
            changes,
            vec![
                Change::Occupied("presence-a".into()),
                Change::MemberAdded {
                    channel: "presence-a".into(),
                    user_id: "u".into(),
                    info: "null".into()
                },
                Change::MemberRemoved {
                    channel: "presence-old".into(),
                    user_id: "x".into()
                },
            ]
        );
        let mut other = AppState::default();
        other.subscribe("presence-a", member("u"), 100).unwrap();
        assert_eq!(other.sync_channels().len(), 1);
    }

    /// Three nodes with users joining and leaving on each, and the nodes' messages
    /// delivered late and in any interleaving (but in order per sender): every node's
    /// clients see `member_added` and `member_removed` alternate for each user, and once
    /// everything is delivered every node sees exactly the users with a tab somewhere and
    /// every node's subscriptions.
    mod merged {
        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeSet, VecDeque};

        const NODES: usize = 3;
        const USERS: u8 = 4;

        enum Msg {
            Join(String),
            Leave(String),
            Count(usize),
        }

        struct Sim {
            apps: Vec<AppState>,
            /// queues[from][to]
            queues: Vec<Vec<VecDeque<Msg>>>,
            /// Users each node's clients believe present.
            seen: Vec<BTreeSet<String>>,
            tabs: Vec<[usize; USERS as usize]>,
        }

        impl Sim {
            fn new() -> Self {
                Self {
                    apps: (0..NODES).map(|_| AppState::default()).collect(),
                    queues: (0..NODES)
                        .map(|_| (0..NODES).map(|_| VecDeque::new()).collect())
                        .collect(),
                    seen: vec![BTreeSet::new(); NODES],
                    tabs: vec![[0; USERS as usize]; NODES],
                }
            }

            fn send(&mut self, from: usize, msg: impl Fn() -> Msg) {
                for to in 0..NODES {
                    if to != from {
                        self.queues[from][to].push_back(msg());
                    }
                }
            }

            fn event(&mut self, node: usize, user: &str, added: bool) -> Result<(), TestCaseError> {
                if added {
                    prop_assert!(self.seen[node].insert(user.to_owned()), "added twice");
                } else {
                    prop_assert!(self.seen[node].remove(user), "removed twice");
                }
                Ok(())
            }

            fn join(&mut self, node: usize, user: u8) -> Result<(), TestCaseError> {
                let id = user.to_string();
                let joined = self.apps[node]
                    .subscribe("presence-a", member(&id), 100)
                    .unwrap();
                self.tabs[node][usize::from(user)] += 1;
                if joined.first {
                    self.event(node, &id, true)?;
                }
                if joined.local_first {
                    self.send(node, || Msg::Join(id.clone()));
                }
                let subs = self.apps[node].local_count("presence-a");
                self.send(node, || Msg::Count(subs));
                Ok(())
            }

            fn leave(&mut self, node: usize, user: u8) -> Result<(), TestCaseError> {
                if self.tabs[node][usize::from(user)] == 0 {
                    return Ok(());
                }
                let id = user.to_string();
                let left = self.apps[node].unsubscribe("presence-a", Some(&id));
                self.tabs[node][usize::from(user)] -= 1;
                if left.member {
                    self.event(node, &id, false)?;
                }
                if left.local_member {
                    self.send(node, || Msg::Leave(id.clone()));
                }
                let subs = self.apps[node].local_count("presence-a");
                self.send(node, || Msg::Count(subs));
                Ok(())
            }

            fn deliver(&mut self, from: usize, to: usize) -> Result<(), TestCaseError> {
                let Some(msg) = self.queues[from][to].pop_front() else {
                    return Ok(());
                };
                let node = from as u64 + 1;
                let app = &mut self.apps[to];
                let changes = match msg {
                    Msg::Join(id) => app.remote_join(node, "presence-a", &id, "null", BOUNDS).0,
                    Msg::Leave(id) => app.remote_leave(node, "presence-a", &id),
                    Msg::Count(subs) => app.remote_count(node, "presence-a", subs).0,
                };
                for change in changes {
                    match change {
                        Change::MemberAdded { user_id, .. } => self.event(to, &user_id, true)?,
                        Change::MemberRemoved { user_id, .. } => self.event(to, &user_id, false)?,
                        Change::Occupied(_) | Change::Vacated(_) => {}
                    }
                }
                Ok(())
            }
        }

        proptest! {
            #[test]
            fn every_node_converges_with_alternating_events(
                ops in proptest::collection::vec((0u8..4, 0usize..NODES, 0usize..NODES, 0u8..USERS), 0..300)
            ) {
                let mut sim = Sim::new();
                for (kind, a, b, user) in ops {
                    match kind {
                        0 => sim.join(a, user)?,
                        1 => sim.leave(a, user)?,
                        _ => sim.deliver(a, b)?,
                    }
                }
                for from in 0..NODES {
                    for to in 0..NODES {
                        while !sim.queues[from][to].is_empty() {
                            sim.deliver(from, to)?;
                        }
                    }
                }
                let present: BTreeSet<String> = (0..USERS)
                    .filter(|&u| sim.tabs.iter().any(|t| t[usize::from(u)] > 0))
                    .map(|u| u.to_string())
                    .collect();
                let total: usize = sim.tabs.iter().flat_map(|t| t.iter()).sum();
                for node in 0..NODES {
                    prop_assert_eq!(&sim.seen[node], &present);
                    let users: BTreeSet<String> = sim.apps[node].users("presence-a").into_iter().collect();
                    prop_assert_eq!(&users, &present);
                    prop_assert_eq!(
                        sim.apps[node].info("presence-a").map_or(0, |i| i.subscriptions),
                        total
                    );
                }
            }
        }
    }
}
