//! The kernel's floor under a broadcast to N idle connections on this machine: N loopback TCP
//! connections held idle, then, round after round, one small `write()` on each and one
//! `read()` of it at the other end. No WebSocket, no io_uring, no server and no load
//! generator: what one segment on each of N sockets costs the kernel when both ends are on
//! the machine, as they are in `scripts/broadcast_all.sh` (docs/PERFORMANCE.md).
//!
//! ```text
//! cargo build --release -p uringcast-loadgen --example segment_floor
//! target/release/examples/segment_floor --connections 1000000 --rounds 3
//! ```
//!
//! The descriptor limit (20,000 a process here) is met as the server and the load generator
//! meet it, with processes: each child holds `--per-process` pairs, both ends (two
//! descriptors a pair). It listens on 127.0.0.1 on a port of its own, connects and accepts its
//! pairs one at a time, and sends a handshake's worth of bytes each way on each (as a
//! WebSocket upgrade does) before they go idle. Once every child is ready, the parent gives
//! them all one start time per round: each child writes `--size` bytes to each of its
//! accepted sockets, then reads them from each connected one, and says when it is done. A
//! round's time runs from its start to the last child's end. Loopback only; every process
//! stops by itself after `--max-seconds`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const USAGE: &str =
    "segment_floor [--connections N] [--per-process K] [--rounds R] [--size BYTES] \
                     [--max-seconds S]";
/// What the handshake sends each way, about an upgrade request's and its 101's size.
const REQUEST_BYTES: usize = 200;
const RESPONSE_BYTES: usize = 129;

struct Options {
    connections: usize,
    per_process: usize,
    rounds: usize,
    size: usize,
    max_seconds: u64,
    child: bool,
}

fn main() {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("segment_floor: {message}\nusage: {USAGE}");
            std::process::exit(2);
        }
    };
    let limit = Duration::from_secs(options.max_seconds);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("segment_floor: --max-seconds passed; exiting");
        std::process::exit(1);
    });
    let outcome = if options.child {
        child(&options)
    } else {
        parent(&options)
    };
    if let Err(error) = outcome {
        eprintln!("segment_floor: {error}");
        std::process::exit(1);
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        connections: 10_000,
        per_process: 9_000,
        rounds: 2,
        size: 64,
        max_seconds: 900,
        child: false,
    };
    while let Some(arg) = args.next() {
        if arg == "--child" {
            options.child = true;
            continue;
        }
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{arg}: not a number: {value}"))
        };
        match arg.as_str() {
            "--connections" => options.connections = number()?,
            "--per-process" => options.per_process = number()?,
            "--rounds" => options.rounds = number()?,
            "--size" => options.size = number()?,
            "--max-seconds" => options.max_seconds = number()? as u64,
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    if options.connections == 0 || options.per_process == 0 || options.size == 0 {
        return Err("--connections, --per-process and --size must be above 0".into());
    }
    // Two descriptors a pair, the listener and the standard ones under the limit here.
    if options.per_process > 9_900 {
        return Err("--per-process is at most 9,900 (two descriptors a pair)".into());
    }
    Ok(options)
}

/// Nanoseconds since the Unix epoch: the one clock every process here reads alike.
fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn sleep_until_ns(at: u128) {
    let now = now_ns();
    if at > now {
        std::thread::sleep(Duration::from_nanos((at - now) as u64));
    }
}

struct Worker {
    process: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Worker {
    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            return Err(io::Error::other("a child ended early"));
        }
        Ok(line.trim_end().to_owned())
    }
}

fn parent(options: &Options) -> io::Result<()> {
    let me = std::env::current_exe()?;
    let mut left = options.connections;
    let mut workers = Vec::new();
    while left > 0 {
        let pairs = left.min(options.per_process);
        left -= pairs;
        let mut process = Command::new(&me)
            .args(["--child", "--per-process", &pairs.to_string()])
            .args(["--rounds", &options.rounds.to_string()])
            .args(["--size", &options.size.to_string()])
            .args(["--max-seconds", &options.max_seconds.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let input = process.stdin.take().expect("stdin is piped");
        let output = BufReader::new(process.stdout.take().expect("stdout is piped"));
        workers.push(Worker {
            process,
            input,
            output,
        });
    }
    let started = now_ns();
    for worker in &mut workers {
        let line = worker.line()?;
        if line != "ready" {
            return Err(io::Error::other(format!("a child said {line:?}")));
        }
    }
    println!(
        "segment_floor: {} connections idle in {} processes, {:.1} s to connect",
        options.connections,
        workers.len(),
        (now_ns() - started) as f64 / 1e9
    );
    for round in 1..=options.rounds {
        let start = now_ns() + 1_000_000_000;
        for worker in &mut workers {
            writeln!(worker.input, "{start}")?;
            worker.input.flush()?;
        }
        let mut ends = Vec::with_capacity(workers.len());
        for worker in &mut workers {
            let line = worker.line()?;
            let end: u128 = line
                .parse()
                .map_err(|_| io::Error::other(format!("a child said {line:?}")))?;
            ends.push(end.saturating_sub(start));
        }
        ends.sort_unstable();
        let s = |ns: u128| ns as f64 / 1e9;
        println!(
            "round {round}: {} segments of {} B written and read in {:.2} s \
             (the median process done at {:.2} s)",
            options.connections,
            options.size,
            s(ends[ends.len() - 1]),
            s(ends[ends.len() / 2])
        );
    }
    for mut worker in workers {
        drop(worker.input);
        worker.process.wait()?;
    }
    Ok(())
}

fn child(options: &Options) -> io::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // The soft descriptor limit up to the hard one, as the server and load generator do.
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut pairs = Vec::with_capacity(options.per_process);
    let mut request = vec![b'r'; REQUEST_BYTES];
    let mut response = vec![b'h'; RESPONSE_BYTES];
    for _ in 0..options.per_process {
        let mut client = TcpStream::connect(addr)?;
        let (mut server, _) = listener.accept()?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        client.write_all(&request)?;
        server.read_exact(&mut request)?;
        server.write_all(&response)?;
        client.read_exact(&mut response)?;
        pairs.push((server, client));
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut commands = io::stdin().lock();
    let segment = vec![b's'; options.size];
    let mut received = vec![0u8; options.size];
    for _ in 0..options.rounds {
        let mut line = String::new();
        if commands.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let start: u128 = line
            .trim()
            .parse()
            .map_err(|_| io::Error::other("a start time"))?;
        sleep_until_ns(start);
        for (server, _) in &mut pairs {
            server.write_all(&segment)?;
        }
        for (_, client) in &mut pairs {
            client.read_exact(&mut received)?;
        }
        writeln!(out, "{}", now_ns())?;
        out.flush()?;
    }
    Ok(())
}
