//! The post-handshake message parser of uringcast's TLS 1.3 record layer (`tls/record.rs`):
//! handshake records of arbitrary content, split and joined anywhere, with application data
//! between them, sealed by the client end of `tls::fuzzing` so they authenticate.
//!
//! Oracle: a naive reference written here from RFC 8446 §4.6.3 and §5.1, which reads the
//! records byte by byte: only KeyUpdate (type 24, body length 1, request_update 0 or 1) may
//! come after the handshake, it may span records but must end its record, no other record
//! type may come between its fragments, a handshake record is never empty, and 32
//! KeyUpdates in a row at most. The server's error (or success), the plaintext, and whether
//! a KeyUpdate reply is owed must equal the reference's.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uringcast::tls::fuzzing::pair;
use uringcast::tls::RecordError;

#[derive(Arbitrary, Debug)]
enum Record {
    Handshake(Vec<u8>),
    Data(Vec<u8>),
    /// A well-formed KeyUpdate split at `at` into two records.
    SplitKeyUpdate {
        request: u8,
        at: u8,
    },
    /// A KeyUpdate with any request_update, then any bytes, in one record.
    KeyUpdateThen {
        request: u8,
        then: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    records: Vec<Record>,
}

/// The reference parser's state.
#[derive(Default)]
struct Reference {
    pending: Vec<u8>,
    in_a_row: u32,
    owed: bool,
    plain: Vec<u8>,
}

impl Reference {
    /// One record; `Ok(true)` when it completed a KeyUpdate (the client's key moves on).
    fn record(&mut self, content_type: u8, content: &[u8]) -> Result<bool, RecordError> {
        if content_type != 22 {
            if !self.pending.is_empty() {
                return Err(RecordError::Interleaved(content_type));
            }
            self.in_a_row = 0;
            self.plain.extend_from_slice(content);
            return Ok(false);
        }
        if content.is_empty() {
            return Err(RecordError::EmptyRecord(22));
        }
        for (i, &byte) in content.iter().enumerate() {
            self.pending.push(byte);
            match self.pending.len() {
                1 if byte != 24 => return Err(RecordError::UnexpectedHandshake(byte)),
                4 => {
                    let p = &self.pending;
                    let length = u32::from_be_bytes([0, p[1], p[2], p[3]]);
                    if length != 1 {
                        return Err(RecordError::MalformedKeyUpdate(length));
                    }
                }
                5 => {
                    if byte > 1 {
                        return Err(RecordError::IllegalKeyUpdateRequest(byte));
                    }
                    if i + 1 != content.len() {
                        return Err(RecordError::KeyUpdateNotLast);
                    }
                    self.pending.clear();
                    self.in_a_row += 1;
                    if self.in_a_row > 32 {
                        return Err(RecordError::TooManyKeyUpdates(32));
                    }
                    self.owed |= byte == 1;
                    return Ok(true);
                }
                _ => {}
            }
        }
        Ok(false)
    }
}

fuzz_target!(|input: Input| {
    let (mut server, mut client) = pair();
    let mut reference = Reference::default();
    let mut expected = Ok(());
    let mut stream = Vec::new();
    let mut records: Vec<(u8, Vec<u8>)> = Vec::new();
    for record in input.records {
        match record {
            Record::Handshake(content) => records.push((22, content)),
            Record::Data(content) => records.push((23, content)),
            Record::SplitKeyUpdate { request, at } => {
                let message = [24, 0, 0, 1, request % 2];
                let at = usize::from(at) % 4 + 1;
                records.push((22, message[..at].to_vec()));
                records.push((22, message[at..].to_vec()));
            }
            Record::KeyUpdateThen { request, then } => {
                let mut content = vec![24, 0, 0, 1, request];
                content.extend(then);
                records.push((22, content));
            }
        }
    }
    for (content_type, content) in &records {
        let content = &content[..content.len().min(16 * 1024)];
        let mut inner = content.to_vec();
        inner.push(*content_type);
        client.seal_inner(&inner, &mut stream);
        match reference.record(*content_type, content) {
            Ok(true) => client.next_sending_key(),
            Ok(false) => {}
            Err(error) => {
                expected = Err(error);
                break;
            }
        }
    }
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    let (result, closed) = server.open(&mut stream, &mut plain, &mut out);
    assert!(!closed);
    assert_eq!(result.map(|used| assert_eq!(used, stream.len())), expected);
    assert_eq!(plain, reference.plain);
    if expected.is_ok() {
        assert_eq!(server.owes_key_update(), reference.owed);
        assert!(out.is_empty());
    } else {
        assert!(!out.is_empty(), "no alert");
    }
});
