//! uringcast's TLS 1.3 record opener (`tls/record.rs`) fed a client's records, built by the
//! other end of the same record layer with a fixed key schedule (`tls::fuzzing`), so they
//! authenticate and reach the rules behind the AEAD: application data, KeyUpdates, inner
//! plaintext of any content type and padding, tampered records and raw bytes.
//!
//! Oracles:
//! - the outcome (plaintext, error, alert bytes, close) is the same whole and split at any
//!   cuts, one byte at a time included (up to 2 KiB);
//! - as long as the records are well formed (data and whole KeyUpdates), the plaintext is
//!   exactly the data sent, every byte is consumed, the KeyUpdate reply is owed exactly when
//!   one was asked for, and the 33rd KeyUpdate in a row is `TooManyKeyUpdates`;
//! - whatever follows, the plaintext starts with the data of that well-formed prefix;
//! - an error sends exactly the alert `RecordError::alert` names, which the client opens as
//!   that fatal alert; a peer's own alert gets none.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uringcast::tls::fuzzing::{pair, End};
use uringcast::tls::RecordError;

#[derive(Arbitrary, Debug)]
enum Op {
    /// An application-data record.
    Data(Vec<u8>),
    /// A KeyUpdate alone in its record; the client's key moves on after it.
    KeyUpdate { request: bool },
    /// A record whose inner plaintext is these bytes: content, content type, padding.
    Inner(Vec<u8>),
    /// Bytes on the wire as they are.
    Raw(Vec<u8>),
    /// An application-data record with one bit flipped.
    Tampered { data: Vec<u8>, at: u16, bit: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
    cuts: Vec<u16>,
}

/// What opening a stream produced.
#[derive(Debug, PartialEq)]
struct Outcome {
    plain: Vec<u8>,
    error: Option<RecordError>,
    out: Vec<u8>,
    closed: bool,
    consumed: usize,
    owes: bool,
}

const MAX_DATA: usize = 16 * 1024;

fuzz_target!(|input: Input| {
    let (_, mut client) = pair();
    let mut stream = Vec::new();
    // The well-formed prefix: its data, whether it ended, its KeyUpdate bookkeeping.
    let (mut expected, mut well_formed, mut asked, mut in_a_row) = (Vec::new(), true, false, 0u32);
    let mut too_many = false;
    for op in &input.ops {
        match op {
            Op::Data(data) => {
                let data = &data[..data.len().min(MAX_DATA)];
                let mut inner = data.to_vec();
                inner.push(23);
                client.seal_inner(&inner, &mut stream);
                if well_formed && !too_many {
                    expected.extend_from_slice(data);
                    in_a_row = 0;
                }
            }
            Op::KeyUpdate { request } => {
                client.seal_inner(&[24, 0, 0, 1, u8::from(*request), 22], &mut stream);
                client.next_sending_key();
                if well_formed && !too_many {
                    in_a_row += 1;
                    if in_a_row > 32 {
                        too_many = true;
                    } else {
                        asked |= *request;
                    }
                }
            }
            Op::Inner(inner) => {
                let inner = &inner[..inner.len().min(MAX_DATA + 2)];
                client.seal_inner(inner, &mut stream);
                well_formed = false;
            }
            Op::Raw(bytes) => {
                stream.extend_from_slice(bytes);
                well_formed = false;
            }
            Op::Tampered { data, at, bit } => {
                let data = &data[..data.len().min(MAX_DATA)];
                let mut inner = data.to_vec();
                inner.push(23);
                let start = stream.len();
                client.seal_inner(&inner, &mut stream);
                let at = start + usize::from(*at) % (stream.len() - start);
                stream[at] ^= 1 << (bit % 8);
                well_formed = false;
            }
        }
    }

    let whole = open(&stream, &[]);
    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|&c| usize::from(c) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    assert_eq!(open(&stream, &cuts), whole, "split at {cuts:?}");
    if stream.len() <= 2048 {
        let every: Vec<usize> = (0..=stream.len()).collect();
        assert_eq!(open(&stream, &every), whole, "one byte at a time");
    }

    assert!(
        whole.plain.starts_with(&expected),
        "the well-formed prefix's data"
    );
    if well_formed {
        if too_many {
            assert_eq!(whole.error, Some(RecordError::TooManyKeyUpdates(32)));
        } else {
            assert_eq!(whole.error, None);
            assert_eq!(whole.plain, expected);
            assert_eq!(whole.consumed, stream.len());
            assert_eq!(whole.owes, asked);
        }
    }
    // The alert, and nothing else, as the client reads it.
    match whole.error.as_ref().and_then(RecordError::alert) {
        Some(alert) => {
            let mut out = whole.out.clone();
            let (result, _) = client.open(&mut out, &mut Vec::new(), &mut Vec::new());
            assert_eq!(result, Err(RecordError::PeerAlert(alert)));
            assert_eq!(out.len(), 5 + 2 + 1 + 16, "one sealed alert");
        }
        None => assert!(
            whole.out.is_empty(),
            "{:?} sent {:?}",
            whole.error,
            whole.out
        ),
    }
});

/// Feeds `stream` to a fresh server in the pieces `cuts` make, as a session does: what is
/// consumed leaves the buffer, the rest waits for more; an error or a close ends it.
fn open(stream: &[u8], cuts: &[usize]) -> Outcome {
    let (mut server, _) = pair();
    let mut outcome = Outcome {
        plain: Vec::new(),
        error: None,
        out: Vec::new(),
        closed: false,
        consumed: 0,
        owes: false,
    };
    let mut incoming = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
        incoming.extend_from_slice(&stream[from..to.max(from)]);
        from = to.max(from);
        let (result, closed) = feed(&mut server, &mut incoming, &mut outcome);
        match result {
            Ok(used) => outcome.consumed += used,
            Err(error) => {
                outcome.error = Some(error);
                // An error says nothing of what was consumed before it, which depends on the
                // split: only the records' effects (plaintext, state) are compared.
                outcome.consumed = 0;
                break;
            }
        }
        if closed {
            outcome.closed = true;
            break;
        }
    }
    outcome.owes = server.owes_key_update();
    outcome
}

fn feed(
    server: &mut End,
    incoming: &mut Vec<u8>,
    outcome: &mut Outcome,
) -> (Result<usize, RecordError>, bool) {
    let (result, closed) = server.open(incoming, &mut outcome.plain, &mut outcome.out);
    if let Ok(used) = result {
        assert!(used <= incoming.len());
        incoming.drain(..used);
    }
    (result, closed)
}
