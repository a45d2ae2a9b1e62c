//! Protocol-core benchmarks. Ids are `group/variant/size`, every group reports
//! `Throughput::Bytes`, and `memcpy/65536` is the physical reference the others are read against.
//!
//! `cargo bench --bench protocol -- '^(unmask|memcpy|utf8)/' --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use uringcast::protocol::mask::{unmask, unmask_bytewise, unmask_words};

/// A small frame, a typical message, and a large one that no longer fits in L1.
const UNMASK_SIZES: [usize; 3] = [64, 1024, 65536];
const LARGE: usize = 65536;
/// RFC 6455 §5.7's mask. Phase 1 so the rotated-mask setup is part of what is timed.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const PHASE: usize = 1;

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + 7) as u8).collect()
}

fn unmask_group(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for size in UNMASK_SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        // In place, as the server does; XOR twice is the identity, so the data stays valid.
        let mut buf = payload(size);
        group.bench_function(BenchmarkId::new("scalar", size), |b| {
            b.iter(|| unmask_bytewise(black_box(&mut buf), black_box(MASK), black_box(PHASE)))
        });
        group.bench_function(BenchmarkId::new("words", size), |b| {
            b.iter(|| unmask_words(black_box(&mut buf), black_box(MASK), black_box(PHASE)))
        });
        group.bench_function(BenchmarkId::new("simd", size), |b| {
            b.iter(|| unmask(black_box(&mut buf), black_box(MASK), black_box(PHASE)))
        });
    }
    group.finish();
}

/// Reads and writes as many bytes as an in-place unmask: the ceiling to compare it with.
fn memcpy_group(c: &mut Criterion) {
    let mut group = c.benchmark_group("memcpy");
    group.throughput(Throughput::Bytes(LARGE as u64));
    let src = payload(LARGE);
    let mut dst = vec![0u8; LARGE];
    group.bench_function(BenchmarkId::from_parameter(LARGE), |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    group.finish();
}

/// Valid text with 1-, 2-, 3- and 4-byte sequences, exactly `len` bytes (ASCII padding).
fn mixed_text(len: usize) -> Vec<u8> {
    const PHRASE: &str = "héllo wörld ✓ 😀 ";
    let mut text = String::with_capacity(len);
    while text.len() + PHRASE.len() <= len {
        text.push_str(PHRASE);
    }
    while text.len() < len {
        text.push('.');
    }
    text.into_bytes()
}

/// `simdutf8::compat` is what the text-message path runs; `std` is the baseline it replaces.
fn utf8_group(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8");
    group.throughput(Throughput::Bytes(LARGE as u64));
    let text = mixed_text(LARGE);
    assert!(
        std::str::from_utf8(&text).is_ok(),
        "benchmark input must be valid UTF-8"
    );
    group.bench_function(BenchmarkId::new("simdutf8", LARGE), |b| {
        b.iter(|| black_box(simdutf8::compat::from_utf8(black_box(&text)).is_ok()))
    });
    group.bench_function(BenchmarkId::new("std", LARGE), |b| {
        b.iter(|| black_box(std::str::from_utf8(black_box(&text)).is_ok()))
    });
    group.finish();
}

/// The receive path as the driver runs it: `WebSocket::read` over a buffer of masked client
/// frames (header checks, unmasking in place, text validation, message hand-out). Each
/// iteration first restores the masked bytes, a copy of the same size as `memcpy/65536`.
fn decode_group(c: &mut Criterion) {
    use uringcast::protocol::frame::encode_frame;
    use uringcast::protocol::{Limits, OpCode, Read, WebSocket};
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(LARGE as u64));
    let cases = [
        ("frames32", 32usize),
        ("frames1024", 1024),
        ("frame65536", LARGE),
    ];
    for (name, size) in cases {
        let payload = vec![b'x'; size];
        let mut wire = Vec::with_capacity(LARGE + 16);
        while wire.len() + size + 14 <= LARGE.max(size + 14) {
            wire.extend_from_slice(&encode_frame(
                OpCode::Text,
                true,
                &payload,
                Some([1, 2, 3, 4]),
            ));
            if size == LARGE {
                break;
            }
        }
        let mut work = wire.clone();
        group.bench_function(BenchmarkId::new(name, LARGE), |b| {
            b.iter(|| {
                work.copy_from_slice(&wire);
                let mut ws = WebSocket::server(Limits::default());
                let mut pos = 0;
                let mut messages = 0usize;
                loop {
                    let (used, read) = ws.read(&mut work[pos..]);
                    pos += used;
                    match read {
                        Read::Message { payload, .. } => messages += payload.len(),
                        Read::NeedMore => break,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                black_box(messages)
            })
        });
    }
    group.finish();
}

/// A browser-like upgrade request through `ServerHandshake`, validation and the 101.
fn handshake_group(c: &mut Criterion) {
    use uringcast::protocol::handshake::ServerHandshake;
    let request = b"GET /chat?room=a HTTP/1.1\r\nHost: example.com:9001\r\nConnection: Upgrade\r\n\
Pragma: no-cache\r\nCache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n\
Upgrade: websocket\r\nOrigin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Bytes(request.len() as u64));
    group.bench_function(BenchmarkId::new("server", request.len()), |b| {
        b.iter(|| {
            let mut handshake = ServerHandshake::new(8192);
            let (_, request) = handshake.feed(black_box(request)).expect("valid request");
            let upgrade = request
                .expect("complete")
                .validate_upgrade()
                .expect("valid upgrade");
            black_box(upgrade.response(None))
        })
    });
    group.finish();
}

/// A ticker message as dashboards send them: JSON that repeats its keys, `levels` book levels.
fn json_tick(levels: usize) -> Vec<u8> {
    let book: Vec<String> = (0..levels)
        .map(|i| format!(r#"{{"price":{}.25,"size":{}}}"#, 101 + i, 100 * (i + 1)))
        .collect();
    format!(
        r#"{{"type":"tick","symbol":"ACME","seq":123456,"bid":101.25,"ask":101.27,"ts":1764680000123,"book":[{}]}}"#,
        book.join(",")
    )
    .into_bytes()
}

/// permessage-deflate: what one compression of a broadcast costs (once per worker, shared by
/// every subscriber), and one inflation of a client's message; sizes are the plain message's.
fn deflate_group(c: &mut Criterion) {
    use uringcast::protocol::deflate::{Deflater, Inflater};
    let mut group = c.benchmark_group("deflate");
    for levels in [8, 100] {
        let tick = json_tick(levels);
        group.throughput(Throughput::Bytes(tick.len() as u64));
        let mut deflater = Deflater::new(0);
        let compressed = deflater.compress(&tick, 15);
        eprintln!(
            "deflate: a {}-byte JSON tick compresses to {} bytes ({:.2}x)",
            tick.len(),
            compressed.len(),
            compressed.len() as f64 / tick.len() as f64
        );
        group.bench_function(BenchmarkId::new("compress_frame", tick.len()), |b| {
            b.iter(|| {
                black_box(deflater.frame(
                    uringcast::protocol::OpCode::Text,
                    black_box(&tick),
                    15,
                    None,
                ))
            })
        });
        let mut inflater = Inflater::new();
        group.bench_function(BenchmarkId::new("inflate", tick.len()), |b| {
            b.iter(|| {
                black_box(
                    inflater
                        .inflate(black_box(&compressed), 1 << 20, &mut u64::MAX.clone())
                        .expect("valid"),
                )
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// decode/… and handshake/… groups go here: add each group's fn above this line and its name
// to the `criterion_group!` list below.
// ---------------------------------------------------------------------------------------------

criterion_group!(
    benches,
    unmask_group,
    memcpy_group,
    utf8_group,
    decode_group,
    handshake_group,
    deflate_group
);
criterion_main!(benches);
