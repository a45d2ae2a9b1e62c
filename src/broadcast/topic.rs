//! One worker's topics: names interned to ids at subscribe time, and each topic's subscriber
//! list, with O(1) unsubscribe (swap-remove, the moved subscriber's index patched).
//!
//! A connection's own subscriptions are kept sorted by topic id, so finding one is a binary
//! search. Each topic carries the live counter that HTTP publishes read from other threads
//! ([`TopicCounts`]): joining or leaving a known topic is one atomic add, and only a topic
//! that is new on this worker, or whose last subscriber left, takes the registry's lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::metrics::TopicCounts;
use super::publication::Position;
use crate::driver::ConnId;

/// A topic's index in [`Topics`].
pub(crate) type TopicId = u32;

/// A connection's subscriptions: each topic and the connection's index in its list, sorted
/// by topic id.
///
/// Most connections hold none or one (a million subscribers of one topic), so one is kept
/// inline: 16 bytes on every connection and no allocation, where a `Vec` took 24 bytes and
/// an allocation per subscriber. Two or more go to a boxed `Vec`.
#[derive(Debug, Default)]
pub(crate) enum Subscriptions {
    #[default]
    None,
    One((TopicId, u32)),
    #[allow(clippy::box_collection)] // 8 bytes on every connection instead of 24: see above
    Many(Box<Vec<(TopicId, u32)>>),
}

impl Subscriptions {
    fn entries(&self) -> &[(TopicId, u32)] {
        match self {
            Self::None => &[],
            Self::One(entry) => std::slice::from_ref(entry),
            Self::Many(entries) => entries,
        }
    }

    fn entries_mut(&mut self) -> &mut [(TopicId, u32)] {
        match self {
            Self::None => &mut [],
            Self::One(entry) => std::slice::from_mut(entry),
            Self::Many(entries) => entries,
        }
    }

    fn search(&self, topic: TopicId) -> Result<usize, usize> {
        self.entries().binary_search_by_key(&topic, |(t, _)| *t)
    }

    fn position(&self, topic: TopicId) -> Option<usize> {
        self.search(topic).ok()
    }

    /// Inserts `entry` at `at`, where [`search`](Self::search) said it belongs.
    fn insert(&mut self, at: usize, entry: (TopicId, u32)) {
        *self = match std::mem::take(self) {
            Self::None => Self::One(entry),
            Self::One(first) => Self::Many(Box::new(if at == 0 {
                vec![entry, first]
            } else {
                vec![first, entry]
            })),
            Self::Many(mut entries) => {
                entries.insert(at, entry);
                Self::Many(entries)
            }
        };
    }

    /// Removes the entry at `position`, which [`position`](Self::position) found.
    fn remove(&mut self, position: usize) -> (TopicId, u32) {
        match std::mem::take(self) {
            Self::None => unreachable!("a position in no subscriptions"),
            Self::One(entry) => entry,
            Self::Many(mut entries) => {
                let entry = entries.remove(position);
                *self = match entries.as_slice() {
                    [] => Self::None,
                    [only] => Self::One(*only),
                    _ => Self::Many(entries),
                };
                entry
            }
        }
    }

    /// Topics subscribed (at most `max_subscriptions_per_connection`).
    pub(crate) fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether the connection is subscribed to `topic`.
    pub(crate) fn contains(&self, topic: TopicId) -> bool {
        self.position(topic).is_some()
    }

    /// The entries, for a closing connection to leave every topic (no allocation for one).
    pub(crate) fn into_entries(self) -> impl Iterator<Item = (TopicId, u32)> {
        let (one, many) = match self {
            Self::None => (None, Vec::new()),
            Self::One(entry) => (Some(entry), Vec::new()),
            Self::Many(entries) => (None, *entries),
        };
        one.into_iter().chain(many)
    }
}

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    subscribers: Vec<ConnId>,
    /// `subscribers.len()`, shared with [`TopicCounts`] for readers on other threads.
    live: Arc<AtomicU64>,
    /// With history on: the position of the last publication this worker's subscribers of
    /// the topic have been given (everything up to it, or told it is lost).
    cursor: Option<Position>,
}

/// The topics of one worker.
#[derive(Debug, Default)]
pub(crate) struct Topics {
    ids: HashMap<Arc<str>, TopicId>,
    topics: Vec<Topic>,
    /// Ids of topics whose last subscriber left, for reuse.
    free: Vec<TopicId>,
}

impl Topics {
    /// The id of a topic with subscribers on this worker.
    pub(crate) fn id(&self, name: &str) -> Option<TopicId> {
        self.ids.get(name).copied()
    }

    /// Topics with at least one subscriber on this worker.
    pub(crate) fn count(&self) -> usize {
        self.ids.len()
    }

    /// The subscribers of a topic, in subscription order up to swap-removals.
    pub(crate) fn subscribers(&self, topic: TopicId) -> &[ConnId] {
        self.topics
            .get(topic as usize)
            .map_or(&[], |t| t.subscribers.as_slice())
    }

    /// The name of a topic.
    pub(crate) fn name(&self, topic: TopicId) -> Option<&Arc<str>> {
        self.topics.get(topic as usize).map(|t| &t.name)
    }

    /// With history on, how far this worker's subscribers of a topic have been brought.
    pub(crate) fn cursor(&self, topic: TopicId) -> Option<Position> {
        self.topics.get(topic as usize).and_then(|t| t.cursor)
    }

    /// Records how far this worker's subscribers of a topic have been brought.
    pub(crate) fn set_cursor(&mut self, topic: TopicId, position: Position) {
        if let Some(t) = self.topics.get_mut(topic as usize) {
            t.cursor = Some(position);
        }
    }

    /// Subscribes `conn`; returns the topic's id and whether this was new for the connection.
    pub(crate) fn subscribe(
        &mut self,
        conn: ConnId,
        subs: &mut Subscriptions,
        name: &str,
        counts: &TopicCounts,
    ) -> (TopicId, bool) {
        let id = match self.ids.get(name) {
            Some(id) => *id,
            None => {
                let name: Arc<str> = Arc::from(name);
                let topic = Topic {
                    live: counts.open(&name),
                    name: Arc::clone(&name),
                    subscribers: Vec::new(),
                    cursor: None,
                };
                let id = match self.free.pop() {
                    Some(id) => {
                        self.topics[id as usize] = topic;
                        id
                    }
                    None => {
                        self.topics.push(topic);
                        (self.topics.len() - 1) as TopicId
                    }
                };
                self.ids.insert(name, id);
                id
            }
        };
        let at = match subs.search(id) {
            Ok(_) => return (id, false),
            Err(at) => at,
        };
        let topic = &mut self.topics[id as usize];
        subs.insert(at, (id, topic.subscribers.len() as u32));
        topic.subscribers.push(conn);
        topic.live.fetch_add(1, Ordering::Relaxed);
        (id, true)
    }

    /// Unsubscribes `conn` from one topic. `subs_of` finds another subscriber's subscriptions,
    /// whose index moves when `conn`'s place is filled by the topic's last subscriber.
    /// Returns whether the connection was subscribed.
    pub(crate) fn unsubscribe<'s>(
        &mut self,
        conn: ConnId,
        subs: &mut Subscriptions,
        topic: TopicId,
        subs_of: impl FnOnce(ConnId) -> Option<&'s mut Subscriptions>,
        counts: &TopicCounts,
    ) -> bool {
        let Some(position) = subs.position(topic) else {
            return false;
        };
        let (_, index) = subs.remove(position);
        self.remove_at(topic, index, conn, subs_of, counts);
        true
    }

    /// Removes one entry of a closing connection's subscriptions (from
    /// [`Subscriptions::into_entries`]).
    pub(crate) fn remove_entry<'s>(
        &mut self,
        conn: ConnId,
        (topic, index): (TopicId, u32),
        subs_of: impl FnOnce(ConnId) -> Option<&'s mut Subscriptions>,
        counts: &TopicCounts,
    ) {
        self.remove_at(topic, index, conn, subs_of, counts);
    }

    fn remove_at<'s>(
        &mut self,
        topic: TopicId,
        index: u32,
        conn: ConnId,
        subs_of: impl FnOnce(ConnId) -> Option<&'s mut Subscriptions>,
        counts: &TopicCounts,
    ) {
        let Some(entry) = self.topics.get_mut(topic as usize) else {
            return;
        };
        let list = &mut entry.subscribers;
        let index = index as usize;
        if list.get(index) != Some(&conn) {
            debug_assert!(false, "subscription index out of date");
            return;
        }
        list.swap_remove(index);
        entry.live.fetch_sub(1, Ordering::Relaxed);
        if let Some(moved) = list.get(index).copied() {
            if let Some(moved_subs) = subs_of(moved) {
                if let Some(p) = moved_subs.position(topic) {
                    moved_subs.entries_mut()[p].1 = index as u32;
                }
            }
        }
        if list.is_empty() {
            let name = Arc::clone(&entry.name);
            entry.subscribers = Vec::new();
            counts.close(&name);
            self.ids.remove(&name);
            self.free.push(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(key: u32) -> ConnId {
        ConnId { key, generation: 0 }
    }

    #[test]
    fn unsubscribe_patches_the_moved_subscriber() {
        let counts = TopicCounts::default();
        let mut topics = Topics::default();
        let mut subs: Vec<Subscriptions> = (0..4).map(|_| Subscriptions::default()).collect();
        for (key, s) in subs.iter_mut().enumerate() {
            topics.subscribe(conn(key as u32), s, "room", &counts);
        }
        assert_eq!(counts.get("room"), 4);
        let id = topics.id("room").unwrap();
        // Remove the first: the last (key 3) moves into index 0 and its record must follow.
        let (first, rest) = subs.split_at_mut(1);
        assert!(topics.unsubscribe(
            conn(0),
            &mut first[0],
            id,
            |c| rest.get_mut(c.key as usize - 1),
            &counts
        ));
        assert_eq!(topics.subscribers(id), [conn(3), conn(1), conn(2)]);
        // Now removing key 3 must find it at index 0.
        let (head, tail) = subs.split_at_mut(3);
        assert!(topics.unsubscribe(
            conn(3),
            &mut tail[0],
            id,
            |c| head.get_mut(c.key as usize),
            &counts
        ));
        assert_eq!(topics.subscribers(id), [conn(2), conn(1)]);
        assert!(!topics.unsubscribe(conn(3), &mut tail[0], id, |_| None, &counts));
        assert_eq!(counts.get("room"), 2);
    }

    #[test]
    fn empty_topics_are_forgotten_and_ids_reused() {
        let counts = TopicCounts::default();
        let mut topics = Topics::default();
        let mut a = Subscriptions::default();
        let (room, new) = topics.subscribe(conn(1), &mut a, "a", &counts);
        assert!(new);
        assert_eq!(
            topics.subscribe(conn(1), &mut a, "a", &counts),
            (room, false)
        );
        assert_eq!(counts.get("a"), 1);
        for entry in std::mem::take(&mut a).into_entries() {
            topics.remove_entry(conn(1), entry, |_| None, &counts);
        }
        assert_eq!(topics.id("a"), None);
        assert_eq!(counts.get("a"), 0);
        assert_eq!(counts.total(), (0, 0));
        let mut b = Subscriptions::default();
        assert_eq!(topics.subscribe(conn(2), &mut b, "b", &counts).0, room);
        assert_eq!(counts.total(), (1, 1));
    }

    /// One subscription is held inline, two or more in a list, and leaving goes back down:
    /// a subscriber of one topic allocates nothing for it.
    #[test]
    fn one_subscription_is_inline_and_more_spill_and_come_back() {
        let counts = TopicCounts::default();
        let mut topics = Topics::default();
        let mut subs = Subscriptions::default();
        assert!(matches!(subs, Subscriptions::None));
        let (b, _) = topics.subscribe(conn(1), &mut subs, "b", &counts);
        assert!(matches!(subs, Subscriptions::One((topic, 0)) if topic == b));
        let (a, _) = topics.subscribe(conn(1), &mut subs, "a", &counts);
        assert!(matches!(subs, Subscriptions::Many(_)));
        assert_eq!(subs.len(), 2);
        assert!(subs.contains(a) && subs.contains(b));
        assert!(topics.unsubscribe(conn(1), &mut subs, b, |_| None, &counts));
        assert!(matches!(subs, Subscriptions::One((topic, 0)) if topic == a));
        assert!(!topics.unsubscribe(conn(1), &mut subs, b, |_| None, &counts));
        assert!(topics.unsubscribe(conn(1), &mut subs, a, |_| None, &counts));
        assert!(matches!(subs, Subscriptions::None));
        assert_eq!(counts.total(), (0, 0));
        assert_eq!(size_of::<Subscriptions>(), 16);
    }

    /// Subscriptions stay sorted whatever order topics are joined and left in, so `contains`
    /// (a binary search) agrees with a scan, and each entry's index still points at the
    /// connection in its topic's list.
    #[test]
    fn subscriptions_stay_sorted_and_their_indexes_true() {
        let counts = TopicCounts::default();
        let mut topics = Topics::default();
        let mut subs: Vec<Subscriptions> = (0..3).map(|_| Subscriptions::default()).collect();
        let names: Vec<String> = (0..40).map(|i| format!("t{}", (i * 17) % 40)).collect();
        for (i, name) in names.iter().enumerate() {
            let key = i % 3;
            topics.subscribe(conn(key as u32), &mut subs[key], name, &counts);
        }
        for (i, name) in names.iter().enumerate().filter(|(i, _)| i % 4 == 1) {
            let key = i % 3;
            let id = topics.id(name).unwrap();
            let mut mine = std::mem::take(&mut subs[key]);
            let left = topics.unsubscribe(
                conn(key as u32),
                &mut mine,
                id,
                |c| subs.get_mut(c.key as usize),
                &counts,
            );
            assert!(left);
            subs[key] = mine;
        }
        for (key, s) in subs.iter().enumerate() {
            assert!(s.entries().windows(2).all(|w| w[0].0 < w[1].0));
            for &(topic, index) in s.entries() {
                assert_eq!(topics.subscribers(topic)[index as usize], conn(key as u32));
                assert!(s.contains(topic));
            }
        }
        let total: usize = subs.iter().map(Subscriptions::len).sum();
        assert_eq!(counts.total(), (topics.count() as u64, total as u64));
    }
}
