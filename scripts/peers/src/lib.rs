//! Shared bits of the peer echo servers and the echo client: argument parsing and the
//! tokio runtime every peer server runs on.

use std::collections::HashMap;

/// `--name value` pairs from the command line; exits with a message on anything else.
pub fn args(allowed: &[&str]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(name) = it.next() {
        let Some(key) = name.strip_prefix("--").filter(|k| allowed.contains(k)) else {
            eprintln!(
                "unknown argument {name:?}; allowed: --{}",
                allowed.join(" --")
            );
            std::process::exit(2);
        };
        let Some(value) = it.next() else {
            eprintln!("--{key} needs a value");
            std::process::exit(2);
        };
        out.insert(key.to_owned(), value);
    }
    out
}

/// Parses `args[key]`, or returns `default`; exits with a message on a bad value.
pub fn arg<T: std::str::FromStr>(args: &HashMap<String, String>, key: &str, default: T) -> T {
    match args.get(key) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("bad value for --{key}: {v:?}");
            std::process::exit(2);
        }),
    }
}

/// The runtime for `threads` workers: current_thread for 1 (everything on the calling thread,
/// as in fastwebsockets' examples/echo_server.rs), else multi_thread with that many workers.
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("tokio runtime")
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_io()
            .build()
            .expect("tokio runtime")
    }
}

/// Prints `listening on ADDR` on stdout and flushes it: the readiness line the bench waits for.
pub fn announce(addr: std::net::SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}
