//! Entry points for the fuzz targets in `fuzz/`, compiled only with `--cfg fuzzing` (as
//! cargo-fuzz builds): uringcast's TLS 1.3 record layer at both ends of a connection, with a
//! fixed key schedule in place of rustls's, so a target can seal records the other end
//! authenticates and reach every rule behind the AEAD.

use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::ConnectionTrafficSecrets;

use super::alert::RecordError;
use super::record::{KeySchedule, Opened, Records};

/// Client-to-server and server-to-client secrets: fixed bytes per direction and generation.
const CLIENT_TO_SERVER: u8 = 1;
const SERVER_TO_CLIENT: u8 = 2;

/// One end's key schedule: generation n of a direction's secret is a function of n alone,
/// so both ends agree without a handshake.
struct Fixed {
    tx: (u8, u32),
    rx: (u8, u32),
}

fn secret(direction: u8, generation: u32) -> (u64, ConnectionTrafficSecrets) {
    let mut key = [direction; 32];
    key[..4].copy_from_slice(&generation.to_le_bytes());
    let mut iv = [direction ^ 0x5a; 12];
    iv[..4].copy_from_slice(&generation.to_be_bytes());
    (
        0,
        ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        },
    )
}

impl KeySchedule for Fixed {
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.tx.1 += 1;
        Ok(secret(self.tx.0, self.tx.1))
    }

    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.rx.1 += 1;
        Ok(secret(self.rx.0, self.rx.1))
    }
}

/// One end of a connection past its handshake.
pub struct End(Box<Records<Fixed>>);

/// A connection's two ends: (server, client).
pub fn pair() -> (End, End) {
    let end = |tx: u8, rx: u8| {
        let schedule = Fixed {
            tx: (tx, 0),
            rx: (rx, 0),
        };
        let records = Records::from_parts(schedule, secret(tx, 0), secret(rx, 0), u64::MAX)
            .expect("fixed secrets are valid ChaCha20-Poly1305 keys");
        End(Box::new(records))
    };
    (
        end(SERVER_TO_CLIENT, CLIENT_TO_SERVER),
        end(CLIENT_TO_SERVER, SERVER_TO_CLIENT),
    )
}

impl End {
    /// Opens the complete records at the front of `incoming`, as a session does: plaintext
    /// to `plain`, the alert of an error to `out`. Returns the bytes consumed (or the error)
    /// and whether the peer sent close_notify.
    pub fn open(
        &mut self,
        incoming: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> (Result<usize, RecordError>, bool) {
        let mut opened = Opened::default();
        let result = self.0.open(incoming, plain, out, &mut opened);
        (result, opened.peer_closed)
    }

    /// Seals one record whose inner plaintext is `inner` as given (content, content type,
    /// padding); nothing for an empty `inner`.
    pub fn seal_inner(&mut self, inner: &[u8], out: &mut Vec<u8>) {
        self.0
            .seal_inner(inner, out)
            .expect("the fixed schedule seals");
    }

    /// Moves to the next sending key, as after sending a KeyUpdate.
    pub fn next_sending_key(&mut self) {
        self.0
            .next_sending_key()
            .expect("the fixed schedule has a next key");
    }

    /// Whether this end owes its peer a KeyUpdate.
    pub fn owes_key_update(&self) -> bool {
        self.0.owes_key_update()
    }
}
