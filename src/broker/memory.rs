//! Tests of the link's task against an in-memory broker: two nodes' links, no sockets. The
//! workers are stood in for by each node's `Mailboxes`: interest is announced as a worker
//! would, and what the link delivers is read back from worker 0's mailbox after its eventfd
//! wakes.

use std::collections::HashMap;
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::link::Link;
use super::task::Task;
use super::{Broker, Events};
use crate::broadcast::uplink::Uplink as _;
use crate::broadcast::{Mailboxes, Publication};
use crate::protocol::OpCode;

/// Each channel's listeners: a node's id and where its client reports.
type Channels = HashMap<String, Vec<(usize, Events)>>;

/// The broker: channels and who listens, whether it is up, and how many times it died.
#[derive(Clone, Default)]
struct Bus {
    subscribers: Arc<Mutex<Channels>>,
    down: Arc<AtomicBool>,
    deaths: Arc<AtomicU64>,
    /// Subscribe requests received: round trips, for a real broker.
    subscribe_requests: Arc<AtomicU64>,
    /// Subscribe requests are refused (as an ACL would) while this is set.
    refuse: Arc<AtomicBool>,
}

/// One node's client. Like a real client's connection, the one it made dies with the broker
/// and stays dead after the broker comes back (`life` is the broker's death count when it
/// connected): only a new `connect` makes it live again.
struct MemoryBroker {
    bus: Bus,
    id: usize,
    events: Option<Events>,
    life: u64,
}

impl Broker for MemoryBroker {
    fn channel(&self, topic: &str) -> String {
        format!("p:{topic}")
    }

    fn topic_of(&self, channel: &[u8]) -> Option<String> {
        let topic = channel.strip_prefix(b"p:")?;
        String::from_utf8(topic.to_vec()).ok()
    }

    async fn connect(&mut self, events: &Events) -> Result<(), String> {
        if self.bus.down.load(Ordering::Acquire) {
            return Err("down".into());
        }
        self.events = Some(events.clone());
        self.life = self.bus.deaths.load(Ordering::Acquire);
        Ok(())
    }

    async fn subscribe(&mut self, channels: &[String]) -> Result<(), String> {
        if !self.is_connected() {
            return Err("not connected".into());
        }
        self.bus.subscribe_requests.fetch_add(1, Ordering::AcqRel);
        if self.bus.refuse.load(Ordering::Acquire) {
            return Err("refused".into());
        }
        let events = self.events.clone().ok_or("not connected")?;
        let mut subscribers = self.bus.subscribers.lock().unwrap();
        for channel in channels {
            subscribers
                .entry(channel.clone())
                .or_default()
                .push((self.id, events.clone()));
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), String> {
        let mut subscribers = self.bus.subscribers.lock().unwrap();
        for channel in channels {
            if let Some(list) = subscribers.get_mut(channel) {
                list.retain(|(id, _)| *id != self.id);
            }
        }
        Ok(())
    }

    async fn publish(&mut self, batch: &[(String, Bytes)]) -> Vec<Result<(), String>> {
        let subscribers = self.bus.subscribers.lock().unwrap();
        batch
            .iter()
            .map(|(channel, message)| {
                if self.bus.down.load(Ordering::Acquire) {
                    return Err("down".to_owned());
                }
                for (_, events) in subscribers.get(channel).into_iter().flatten() {
                    events.message(Bytes::from(channel.clone()), message.clone());
                }
                Ok(())
            })
            .collect()
    }

    fn is_connected(&self) -> bool {
        self.events.is_some()
            && !self.bus.down.load(Ordering::Acquire)
            && self.life == self.bus.deaths.load(Ordering::Acquire)
    }

    async fn close(&mut self) {
        self.events = None;
        let mut subscribers = self.bus.subscribers.lock().unwrap();
        for list in subscribers.values_mut() {
            list.retain(|(id, _)| *id != self.id);
        }
    }
}

impl Bus {
    /// The broker dies: every client hears of it, and nothing gets through until `revive`.
    fn kill(&self) {
        self.down.store(true, Ordering::Release);
        self.deaths.fetch_add(1, Ordering::AcqRel);
        let mut subscribers = self.subscribers.lock().unwrap();
        for (_, events) in subscribers.drain().flat_map(|(_, list)| list) {
            events.lost();
        }
    }

    fn revive(&self) {
        self.down.store(false, Ordering::Release);
    }
}

/// One node: its mailboxes (one worker) and its link, whose task runs on a thread of its own.
struct Node {
    hub: Arc<Mailboxes>,
    link: Arc<Link>,
    shared: Arc<crate::driver::Shared>,
}

impl Node {
    fn start(bus: &Bus, id: usize) -> Self {
        let shared = Arc::new(crate::driver::Shared::new(1).expect("an eventfd"));
        let hub = Arc::new(Mailboxes::new(Arc::clone(&shared)));
        let link = Arc::new(Link::new(&"redis://127.0.0.1:1".parse().expect("a URL")));
        let broker = MemoryBroker {
            bus: bus.clone(),
            id,
            events: None,
            life: 0,
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let (task_link, task_hub) = (Arc::clone(&link), Arc::clone(&hub));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(Task::new(broker, task_link, task_hub, 1 << 20).run(ready_tx));
        });
        link.set_thread(thread);
        ready_rx
            .recv()
            .expect("a first attempt")
            .expect("connected");
        Self { hub, link, shared }
    }

    /// The next frame the link handed to the worker: waits on the worker's eventfd.
    fn next_frame(&self) -> Bytes {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(mail) = self.hub.take(0) {
                return mail.payload().clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "nothing delivered within 10 s");
            let waker = &self.shared.wakers[0];
            let mut fds = [nix::poll::PollFd::new(
                waker.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
            let _ = waker.read();
            self.hub.wake_pending[0].store(false, Ordering::Release);
        }
    }

    /// Waits until the link has `n` topics subscribed at the broker.
    fn wait_subscribed(&self, n: u64) {
        assert!(
            self.link.wait_subscribed(n, Duration::from_secs(10)),
            "the subscriptions: not {n} within 10 s"
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.link.stop();
    }
}

/// Waits until `done`: the link reports no event for what its counters count, so this reads
/// them every millisecond, for at most 10 s.
fn wait_for(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The topics node `id` is subscribed to at the bus, sorted.
fn held_by(bus: &Bus, id: usize) -> Vec<String> {
    let subscribers = bus.subscribers.lock().unwrap();
    let mut topics: Vec<String> = subscribers
        .iter()
        .filter(|(_, list)| list.iter().any(|(node, _)| *node == id))
        .filter_map(|(channel, _)| channel.strip_prefix("p:").map(str::to_owned))
        .collect();
    topics.sort();
    topics
}

/// A publication made on a node, as the engine hands it to the link.
fn publication(topic: &Arc<str>, opcode: OpCode, text: &[u8]) -> Arc<Publication> {
    Publication::new(
        Arc::clone(topic),
        opcode,
        Bytes::copy_from_slice(text),
        None,
    )
}

#[test]
fn a_publish_crosses_to_the_node_that_holds_the_topic_once() {
    let bus = Bus::default();
    let (a, b) = (Node::start(&bus, 1), Node::start(&bus, 2));
    let topic: Arc<str> = Arc::from("room");
    b.link.interest(&topic, true);
    a.link.interest(&topic, true); // A holds it too: its own publishes come back to it
    b.wait_subscribed(1);
    a.wait_subscribed(1);
    for text in ["one", "two", "three"] {
        a.link
            .publish(&publication(&topic, OpCode::Text, text.as_bytes()));
    }
    for text in ["one", "two", "three"] {
        assert_eq!(&b.next_frame()[..], text.as_bytes());
    }
    a.link.publish(&publication(&topic, OpCode::Text, b"four"));
    assert_eq!(&b.next_frame()[..], b"four");
    // A gets its four echoes back: all skipped, none handed to its worker.
    wait_for(
        || a.link.stats.own_skipped.load(Ordering::Relaxed) == 4,
        "A's echoes",
    );
    assert!(a.hub.take(0).is_none(), "A delivered its own publish twice");
    assert_eq!(a.link.stats.received.load(Ordering::Relaxed), 0);
    assert_eq!(b.link.stats.received.load(Ordering::Relaxed), 4);
    assert_eq!(b.link.stats.gaps.load(Ordering::Relaxed), 0);
}

#[test]
fn interest_follows_the_workers_and_drops_show_as_gaps() {
    let bus = Bus::default();
    let (a, b) = (Node::start(&bus, 1), Node::start(&bus, 2));
    let topic: Arc<str> = Arc::from("feed");
    b.link.interest(&topic, true);
    b.wait_subscribed(1);
    let frame = |text: &str| publication(&topic, OpCode::Binary, text.as_bytes());
    a.link.publish(&frame("first"));
    assert_eq!(&b.next_frame()[..], b"first");
    // Two publishes dropped at A's full queue: their sequence numbers are spent.
    a.link.note_drops_for_test(&topic, 2);
    a.link.publish(&frame("after"));
    assert_eq!(&b.next_frame()[..], b"after");
    assert_eq!(b.link.stats.gaps.load(Ordering::Relaxed), 2);
    // B's last worker leaves: B unsubscribes, and the bus stops sending it anything.
    b.link.interest(&topic, false);
    b.wait_subscribed(0);
    assert!(bus.subscribers.lock().unwrap()["p:feed"].is_empty());
}

#[test]
fn a_lost_broker_is_rejoined_and_what_was_lost_is_counted_at_both_ends() {
    let bus = Bus::default();
    let (a, b) = (Node::start(&bus, 1), Node::start(&bus, 2));
    let topic: Arc<str> = Arc::from("t");
    b.link.interest(&topic, true);
    b.wait_subscribed(1);
    let frame = |text: &str| publication(&topic, OpCode::Text, text.as_bytes());
    a.link.publish(&frame("before"));
    assert_eq!(&b.next_frame()[..], b"before");
    bus.kill();
    for _ in 0..3 {
        a.link.publish(&frame("during"));
    }
    let failures = &a.link.stats.publish_failures;
    wait_for(
        || failures.load(Ordering::Relaxed) == 3,
        "A's failed publishes",
    );
    bus.revive();
    // Both links come back by themselves (backoff of 50 ms to 200 ms) and B subscribes again.
    wait_for(
        || {
            bus.subscribers
                .lock()
                .unwrap()
                .get("p:t")
                .is_some_and(|l| !l.is_empty())
        },
        "B's subscription after the broker came back",
    );
    wait_for(
        || a.link.stats.reconnects.load(Ordering::Relaxed) == 1,
        "A's link",
    );
    a.link.publish(&frame("after"));
    assert_eq!(&b.next_frame()[..], b"after");
    assert_eq!(
        b.link.stats.gaps.load(Ordering::Relaxed),
        3,
        "B saw the hole"
    );
    assert!(b.link.stats.reconnects.load(Ordering::Relaxed) >= 1);
}

#[test]
fn a_broker_back_before_the_link_noticed_its_death_is_still_rejoined() {
    // The loss is heard after the broker is up again: the old connection must still count
    // as dead (it is, for a real client), and the subscription be made anew.
    let bus = Bus::default();
    let (a, b) = (Node::start(&bus, 1), Node::start(&bus, 2));
    let topic: Arc<str> = Arc::from("t");
    b.link.interest(&topic, true);
    b.wait_subscribed(1);
    bus.kill();
    bus.revive();
    wait_for(
        || b.link.stats.reconnects.load(Ordering::Relaxed) == 1,
        "B's link",
    );
    b.wait_subscribed(1);
    a.link.publish(&publication(&topic, OpCode::Text, b"after"));
    assert_eq!(&b.next_frame()[..], b"after");
}

#[test]
fn a_node_with_many_topics_subscribes_them_again_in_a_few_requests() {
    const TOPICS: usize = 3000;
    let bus = Bus::default();
    let (a, b) = (Node::start(&bus, 1), Node::start(&bus, 2));
    let topics: Vec<Arc<str>> = (0..TOPICS)
        .map(|i| Arc::from(format!("room-{i}")))
        .collect();
    for topic in &topics {
        b.link.interest(topic, true);
    }
    b.wait_subscribed(TOPICS as u64);
    assert_eq!(held_by(&bus, 2).len(), TOPICS);
    // After a reconnection every topic is wanted at once: one request per batch, where one
    // per topic would be 3,000 round trips before the last topic flows again.
    let before = bus.subscribe_requests.load(Ordering::Acquire);
    bus.kill();
    // While the broker is away the link holds nothing there, and says so.
    b.wait_subscribed(0);
    bus.revive();
    b.wait_subscribed(TOPICS as u64);
    assert_eq!(held_by(&bus, 2).len(), TOPICS);
    let requests = bus.subscribe_requests.load(Ordering::Acquire) - before;
    // 3,000 topics in batches of 1,024: three requests.
    assert_eq!(super::SUBSCRIBE_BATCH, 1024);
    assert!(
        requests <= 3,
        "{requests} subscribe requests for {TOPICS} topics"
    );
    a.link
        .publish(&publication(&topics[TOPICS - 1], OpCode::Text, b"last"));
    assert_eq!(&b.next_frame()[..], b"last");
}

#[test]
fn a_refused_subscription_is_tried_again() {
    let bus = Bus::default();
    let b = Node::start(&bus, 2);
    bus.refuse.store(true, Ordering::Release);
    b.link.interest(&Arc::from("guarded"), true);
    wait_for(
        || bus.subscribe_requests.load(Ordering::Acquire) >= 1,
        "the first subscribe request",
    );
    assert!(held_by(&bus, 2).is_empty());
    bus.refuse.store(false, Ordering::Release);
    // Nothing else changes: only the retry (after a second) can subscribe it.
    b.wait_subscribed(1);
    assert_eq!(held_by(&bus, 2), ["guarded"]);
}

#[test]
fn churn_past_the_change_limit_while_the_broker_is_away_ends_in_the_topics_held() {
    let bus = Bus::default();
    let b = Node::start(&bus, 2);
    let first: Vec<Arc<str>> = (0..10).map(|i| Arc::from(format!("first-{i}"))).collect();
    for topic in &first {
        b.link.interest(topic, true);
    }
    b.wait_subscribed(10);
    bus.kill();
    b.wait_subscribed(0);
    // While the broker is away: half the first topics are left, more than the link lists come
    // and go, and two new ones stay. The link gives up its list for every held topic.
    for topic in &first[..5] {
        b.link.interest(topic, false);
    }
    for i in 0..=super::link::CHANGES_MAX {
        let topic: Arc<str> = Arc::from(format!("brief-{i}"));
        b.link.interest(&topic, true);
        b.link.interest(&topic, false);
    }
    for topic in ["later-0", "later-1"] {
        b.link.interest(&Arc::from(topic), true);
    }
    bus.revive();
    b.wait_subscribed(7);
    let mut expected: Vec<String> = first[5..].iter().map(|t| t.to_string()).collect();
    expected.extend(["later-0".to_owned(), "later-1".to_owned()]);
    expected.sort();
    assert_eq!(held_by(&bus, 2), expected);
}
