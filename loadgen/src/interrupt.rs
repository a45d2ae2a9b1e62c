//! Ctrl-C: the first SIGINT asks the run to stop early and report what it measured; a second
//! one exits at once (130, the shell's code for SIGINT).
//!
//! SIGINT is blocked in the main thread before any other starts (threads inherit the mask),
//! and one thread waits for it with `sigwait`, so no signal handler (and no `unsafe`) is needed.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Exit code after a second Ctrl-C.
const EXIT_INTERRUPTED: i32 = 130;

/// Blocks SIGINT in this thread and every thread it starts later, and starts the thread that
/// waits for it. Call once, from `main`, before starting any other thread.
pub fn install() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    if nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        // Without the mask the default action (exit) stays: no summary, but nothing breaks.
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("uringcast-load-sigint".into())
        .spawn(move || loop {
            if set.wait().is_err() {
                return;
            }
            if REQUESTED.swap(true, Ordering::SeqCst) {
                std::process::exit(EXIT_INTERRUPTED);
            }
            eprintln!(
                "\nuringcast-load: interrupted; stopping and reporting (Ctrl-C again to quit)"
            );
        });
    if spawned.is_err() {
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    }
}

/// Whether Ctrl-C was pressed.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}
