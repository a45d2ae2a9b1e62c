//! The way out of a node: an [`Uplink`] hears of every publish this node makes and of every
//! topic that appears on or leaves a worker. The broker link (`crate::broker`) is one; the
//! engine knows only this trait.

use std::sync::Arc;

use super::publication::Publication;

/// Something outside the workers that takes this node's publishes and follows its topics.
/// Every method is called on a worker's thread (or a publishing thread), so none may block.
pub(crate) trait Uplink: Send + Sync + std::fmt::Debug {
    /// A publish this node made (a reference, not a copy).
    fn publish(&self, publication: &Arc<Publication>);
    /// A topic got its first subscriber on a worker (`held`), or lost its last one there.
    fn interest(&self, topic: &Arc<str>, held: bool);
    /// Appends the uplink's counters to `/metrics`, in the Prometheus text format.
    fn render_metrics(&self, out: &mut String);
}
