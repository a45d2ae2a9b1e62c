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

// ---------------------------------------------------------------------------------------------
// decode/… and handshake/… groups go here: add each group's fn above this line and its name
// to the `criterion_group!` list below.
// ---------------------------------------------------------------------------------------------

criterion_group!(benches, unmask_group, memcpy_group, utf8_group);
criterion_main!(benches);
