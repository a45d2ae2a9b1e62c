//! A side channel between the nodes of a cluster, for a handler's own shared state (Pusher's
//! presence members and channel counts): messages on one reserved topic of the broker that
//! reach the handler of every other node, never a connection.
//!
//! The broker link subscribes to [`CLUSTER_TOPIC`] for the node's whole life once a handler
//! joins ([`Handler::join_cluster`](super::Handler::join_cluster)); what arrives there goes to
//! the handler's [`ClusterSink`] on the link's thread, and [`ClusterBus::send`] publishes to it
//! through the link's bounded queue. Without a broker there is no cluster, and a handler keeps
//! its state per node.

use std::sync::Arc;

use bytes::Bytes;

use super::{Hub, Peer, Publication};
use crate::protocol::OpCode;

/// The broker topic of the side channel. `#` starts no topic a client can name: rooms are
/// paths (`/...`), Pusher channels `APP_ID:NAME`.
pub const CLUSTER_TOPIC: &str = "#uringcast-cluster";

/// What hears the other nodes' messages.
pub trait ClusterSink: Send + Sync + std::fmt::Debug {
    /// A message another node sent with [`ClusterBus::send`] (the node's own come back only
    /// through a broker that keeps streams; the handler tells them apart). Called on the
    /// broker link's thread: it must not block.
    fn receive(&self, payload: &[u8]);
}

/// The way to the other nodes, and to this node's own subscribers, outside any connection.
#[derive(Clone, Debug)]
pub struct ClusterBus {
    hub: Arc<Hub>,
}

impl ClusterBus {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    /// Sends `payload` to every other node's [`ClusterSink`], through the broker link's
    /// bounded queue (dropped and counted when it is full, as any publish).
    pub fn send(&self, payload: Bytes) {
        if let Some(uplink) = self.hub.uplink() {
            let topic: Arc<str> = Arc::from(CLUSTER_TOPIC);
            uplink.publish(&Publication::new(topic, OpCode::Text, payload, None));
        }
    }

    /// Delivers a message to this node's subscribers of `topic` only (every worker), but
    /// `except`: not through the broker, and without a position in the topic's history.
    pub fn deliver_local(&self, topic: &str, opcode: OpCode, payload: &[u8], except: Option<Peer>) {
        let publication = Publication::new(
            Arc::from(topic),
            opcode,
            Bytes::copy_from_slice(payload),
            None,
        );
        if let Some(peer) = except {
            publication.exclude(peer);
        }
        self.hub.post(&publication, None);
    }
}
