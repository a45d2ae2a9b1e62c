//! `utf8::validate_prefix` over arbitrary splits, the incomplete tail re-fed before the next
//! chunk, checked against `std::str::from_utf8` of the whole input: the same final verdict, and
//! the failure reported exactly in the chunk where the bytes seen first became certainly
//! invalid (not before: a continuation could still repair them; not after: fail fast, §8.1).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uringcast::protocol::utf8::{validate, validate_prefix, InvalidUtf8};

#[derive(Arbitrary, Debug)]
enum Input {
    /// Arbitrary bytes.
    Bytes { cuts: Vec<u16>, bytes: Vec<u8> },
    /// Valid text with a few bytes overwritten: mostly multi-byte sequences, some broken.
    Edited {
        cuts: Vec<u16>,
        edits: Vec<(u16, u8)>,
        text: String,
    },
}

fn split<'a>(bytes: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) % (bytes.len() + 1))
        .collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// The length of the shortest prefix of `bytes` that no continuation can make valid, if any.
fn certainly_invalid_at(bytes: &[u8]) -> Option<usize> {
    let error = std::str::from_utf8(bytes).err()?;
    // The whole input is only incomplete: never certainly invalid.
    let len = error.error_len()?;
    let bad = error.valid_up_to() + len;
    // The sequence is known bad either at its last byte or at the byte after it, which shows
    // it cannot continue; std blames the same bytes for every longer prefix.
    (bad..=bytes.len())
        .find(|&n| {
            std::str::from_utf8(&bytes[..n])
                .err()
                .is_some_and(|e| e.error_len().is_some())
        })
        .inspect(|&n| assert!(n <= bad + 1, "known bad at {n}, std blames {bad}"))
}

fn check(bytes: &[u8], cuts: &[u16]) {
    let std_ok = std::str::from_utf8(bytes).is_ok();
    assert_eq!(
        validate(bytes).is_ok(),
        std_ok,
        "validate disagrees with std"
    );
    let invalid_at = certainly_invalid_at(bytes);

    let mut tail: Vec<u8> = Vec::new();
    let mut end = 0;
    // The failing chunk, as the range of stream offsets it covers.
    let mut failed_at = None;
    for chunk in split(bytes, cuts) {
        let start = end;
        end += chunk.len();
        let mut pending = std::mem::take(&mut tail);
        pending.extend_from_slice(chunk);
        match validate_prefix(&pending) {
            Ok(valid) => {
                assert!(valid <= pending.len());
                assert!(
                    std::str::from_utf8(&pending[..valid]).is_ok(),
                    "prefix not valid"
                );
                let rest = &pending[valid..];
                assert!(rest.len() <= 3, "a tail of {} bytes", rest.len());
                if let Err(e) = std::str::from_utf8(rest) {
                    assert_eq!(e.valid_up_to(), 0, "the tail holds a whole code point");
                    assert!(e.error_len().is_none(), "the tail is already invalid");
                } else {
                    assert!(rest.is_empty(), "a valid tail was left unchecked");
                }
                tail = rest.to_vec();
            }
            Err(InvalidUtf8) => {
                failed_at = Some((start, end));
                break;
            }
        }
    }
    match (failed_at, invalid_at) {
        (None, None) => {
            // Valid, or only truncated at the very end.
            assert_eq!(
                tail.is_empty(),
                std_ok,
                "the final verdict differs from std"
            );
        }
        (Some((start, end)), Some(at)) => {
            assert!(
                end >= at,
                "failed in {start}..{end}, before invalid at {at}"
            );
            assert!(
                start < at,
                "failed in {start}..{end}, a chunk later than {at}"
            );
        }
        (None, Some(at)) => panic!("invalid at {at}, never reported"),
        (Some(range), None) => panic!("reported invalid in {range:?}; std: only truncated"),
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Bytes { cuts, bytes } => check(&bytes, &cuts),
        Input::Edited { cuts, edits, text } => {
            let mut bytes = text.into_bytes();
            if !bytes.is_empty() {
                for (at, byte) in edits.iter().take(4) {
                    let len = bytes.len();
                    bytes[usize::from(*at) % len] = *byte;
                }
            }
            check(&bytes, &cuts);
        }
    }
});
