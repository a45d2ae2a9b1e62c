//! One worker's topics: names interned to ids at subscribe time, and each topic's subscriber
//! list, with O(1) unsubscribe (swap-remove, the moved subscriber's index patched).

use std::collections::HashMap;
use std::sync::Arc;

use crate::driver::ConnId;

/// A topic's index in [`Topics`].
pub(crate) type TopicId = u32;

/// A connection's subscriptions: each topic and the connection's index in its list.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    entries: Vec<(TopicId, u32)>,
}

impl Subscriptions {
    fn position(&self, topic: TopicId) -> Option<usize> {
        self.entries.iter().position(|(t, _)| *t == topic)
    }

    /// Topics subscribed (at most `max_subscriptions_per_connection`, so `position`'s scan
    /// stays short).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the connection is subscribed to `topic`.
    pub(crate) fn contains(&self, topic: TopicId) -> bool {
        self.position(topic).is_some()
    }

    /// The entries, for a closing connection to leave every topic.
    pub(crate) fn into_entries(self) -> Vec<(TopicId, u32)> {
        self.entries
    }
}

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    subscribers: Vec<ConnId>,
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

    /// Subscribes `conn`; returns the topic's id and whether this was new for the connection.
    pub(crate) fn subscribe(
        &mut self,
        conn: ConnId,
        subs: &mut Subscriptions,
        name: &str,
    ) -> (TopicId, bool) {
        let id = match self.ids.get(name) {
            Some(id) => *id,
            None => {
                let name: Arc<str> = Arc::from(name);
                let topic = Topic {
                    name: Arc::clone(&name),
                    subscribers: Vec::new(),
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
        if subs.position(id).is_some() {
            return (id, false);
        }
        let list = &mut self.topics[id as usize].subscribers;
        subs.entries.push((id, list.len() as u32));
        list.push(conn);
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
    ) -> bool {
        let Some(position) = subs.position(topic) else {
            return false;
        };
        let (_, index) = subs.entries.swap_remove(position);
        self.remove_at(topic, index, conn, subs_of);
        true
    }

    /// Removes one entry of a closing connection's subscriptions (from
    /// [`Subscriptions::into_entries`]); returns the topic's name.
    pub(crate) fn remove_entry<'s>(
        &mut self,
        conn: ConnId,
        (topic, index): (TopicId, u32),
        subs_of: impl FnOnce(ConnId) -> Option<&'s mut Subscriptions>,
    ) -> Option<Arc<str>> {
        let name = self.name(topic).map(Arc::clone);
        self.remove_at(topic, index, conn, subs_of);
        name
    }

    fn remove_at<'s>(
        &mut self,
        topic: TopicId,
        index: u32,
        conn: ConnId,
        subs_of: impl FnOnce(ConnId) -> Option<&'s mut Subscriptions>,
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
        if let Some(moved) = list.get(index).copied() {
            if let Some(moved_subs) = subs_of(moved) {
                if let Some(p) = moved_subs.position(topic) {
                    moved_subs.entries[p].1 = index as u32;
                }
            }
        }
        if list.is_empty() {
            let name = Arc::clone(&entry.name);
            entry.subscribers = Vec::new();
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
        let mut topics = Topics::default();
        let mut subs: Vec<Subscriptions> = (0..4).map(|_| Subscriptions::default()).collect();
        for (key, s) in subs.iter_mut().enumerate() {
            topics.subscribe(conn(key as u32), s, "room");
        }
        let id = topics.id("room").unwrap();
        // Remove the first: the last (key 3) moves into index 0 and its record must follow.
        let (first, rest) = subs.split_at_mut(1);
        assert!(topics.unsubscribe(conn(0), &mut first[0], id, |c| rest
            .get_mut(c.key as usize - 1)));
        assert_eq!(topics.subscribers(id), [conn(3), conn(1), conn(2)]);
        // Now removing key 3 must find it at index 0.
        let (head, tail) = subs.split_at_mut(3);
        assert!(topics.unsubscribe(conn(3), &mut tail[0], id, |c| head.get_mut(c.key as usize)));
        assert_eq!(topics.subscribers(id), [conn(2), conn(1)]);
        assert!(!topics.unsubscribe(conn(3), &mut tail[0], id, |_| None));
    }

    #[test]
    fn empty_topics_are_forgotten_and_ids_reused() {
        let mut topics = Topics::default();
        let mut a = Subscriptions::default();
        let (room, new) = topics.subscribe(conn(1), &mut a, "a");
        assert!(new);
        assert_eq!(topics.subscribe(conn(1), &mut a, "a"), (room, false));
        let entries = std::mem::take(&mut a).into_entries();
        let left: Vec<_> = entries
            .into_iter()
            .filter_map(|e| topics.remove_entry(conn(1), e, |_| None))
            .collect();
        assert_eq!(left, [Arc::<str>::from("a")]);
        assert_eq!(topics.id("a"), None);
        let mut b = Subscriptions::default();
        assert_eq!(topics.subscribe(conn(2), &mut b, "b").0, room);
    }
}
