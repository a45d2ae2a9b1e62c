//! Fail-fast UTF-8 validation of text that arrives in pieces (RFC 6455 §8.1).
//!
//! A text message is valid only once it is whole, but it is *invalid* as soon as any byte
//! sequence in it can no longer start valid UTF-8, whatever follows: that is when the
//! connection must be failed with 1007, not at the end of the message.

/// Validates `bytes`, which may end inside a code point that later bytes will complete.
///
/// Returns the length of the prefix that is complete, valid UTF-8; the remaining 0-3 bytes
/// are the start of a code point that is not yet invalid and must be checked again once more
/// bytes arrive (prepended to them).
///
/// # Errors
///
/// [`InvalidUtf8`] when the bytes contain a sequence no continuation could make valid.
pub fn validate_prefix(bytes: &[u8]) -> Result<usize, InvalidUtf8> {
    // The basic validator is the fast path; only a failure needs the detailed second pass.
    if simdutf8::basic::from_utf8(bytes).is_ok() {
        return Ok(bytes.len());
    }
    match simdutf8::compat::from_utf8(bytes) {
        Ok(_) => Ok(bytes.len()),
        // `error_len() == None`: the input ended in the middle of a sequence that is valid so far.
        Err(e) if e.error_len().is_none() => Ok(e.valid_up_to()),
        Err(_) => Err(InvalidUtf8),
    }
}

/// Validates a complete piece of text.
///
/// # Errors
///
/// [`InvalidUtf8`] unless `bytes` is entirely valid UTF-8.
pub fn validate(bytes: &[u8]) -> Result<(), InvalidUtf8> {
    simdutf8::basic::from_utf8(bytes)
        .map(|_| ())
        .map_err(|_| InvalidUtf8)
}

/// The bytes are not, and can never become, valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn truncated_code_point_is_not_yet_invalid() {
        let euro = "€".as_bytes(); // e2 82 ac
        assert_eq!(validate_prefix(&euro[..1]), Ok(0));
        assert_eq!(validate_prefix(&euro[..2]), Ok(0));
        assert_eq!(validate_prefix(euro), Ok(3));
        assert_eq!(validate_prefix(b"ab\xf0\x9f\x98"), Ok(2));
    }

    #[test]
    fn certain_invalidity_is_reported_before_the_end() {
        // Autobahn 6.4.x: 0xf4 0x90 can never start a code point <= U+10FFFF.
        assert_eq!(validate_prefix(b"\xce\xba\xf4\x90"), Err(InvalidUtf8));
        assert_eq!(validate_prefix(b"\xed\xa0"), Err(InvalidUtf8)); // surrogate
        assert_eq!(validate_prefix(b"a\xff"), Err(InvalidUtf8));
        assert_eq!(validate_prefix(b"\xc0"), Err(InvalidUtf8)); // overlong lead
        assert_eq!(validate_prefix(b"\xe2\x28"), Err(InvalidUtf8));
    }

    proptest! {
        /// Feeding any split of any bytes through `validate_prefix` accepts exactly what
        /// `std::str::from_utf8` accepts, and fails no later than the byte std blames.
        #[test]
        fn split_validation_agrees_with_std(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut checked = 0;
            let mut failed_at = None;
            for &end in &cuts {
                match validate_prefix(&bytes[checked..end]) {
                    Ok(n) => checked += n,
                    Err(InvalidUtf8) => { failed_at = Some(end); break; }
                }
            }
            let whole_ok = failed_at.is_none() && checked == bytes.len();
            prop_assert_eq!(whole_ok, std::str::from_utf8(&bytes).is_ok());
            if let (Some(end), Err(e)) = (failed_at, std::str::from_utf8(&bytes)) {
                prop_assert!(e.valid_up_to() < end);
            }
        }
    }
}
