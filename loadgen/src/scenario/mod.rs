//! Load scenarios. Each one is bounded in count and time and stops by itself.

pub mod broadcast;
pub mod churn;
pub mod connect;
pub mod echo;
pub mod session;
pub mod sse;
pub mod stamp;
pub mod tick;
pub mod traffic;

/// Pins the calling thread to one of the CPUs the process may run on (round-robin by thread
/// id), so a `taskset` given to the whole process is respected.
pub(crate) fn pin_thread(id: usize) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(core) = cores.get(id % cores.len().max(1)) {
        core_affinity::set_for_current(*core);
    }
}
