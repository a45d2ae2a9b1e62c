//! `wss://`: each connection's TLS session between the ring and the WebSocket client.
//!
//! The open chain sends the ClientHello where a `ws://` connection sends its upgrade request;
//! the request waits in the session until the TLS handshake is over, and the time from TCP's
//! connect to that point is the TLS handshake latency, reported apart from the upgrade's.
//! Received ciphertext is opened into plaintext that takes the same path as a `ws://`
//! connection's bytes; outgoing frames are sealed into one ciphertext buffer per send.

use std::time::Instant;

use bytes::Bytes;

use super::conn::Conn;
use super::net::{micros_since, Net};
use super::Workload;
use crate::report::Failure;
use crate::tls::ClientTls;
use crate::uring::Ops;

/// One connection's TLS state.
pub(super) struct SlotTls {
    session: ClientTls,
    /// Ciphertext made and not yet handed to a send.
    out: Vec<u8>,
    /// The ciphertext of the TLS send in flight, to resend the rest after a short send.
    pub(super) sending: Option<Bytes>,
    /// The upgrade request, sealed and sent once the TLS handshake is over.
    request: Option<Bytes>,
    /// When TCP connected.
    connected_at: Option<Instant>,
}

impl SlotTls {
    /// A session for a new connection: returns it and the ClientHello the open chain sends.
    /// `server_name` is the name the server's certificate must carry.
    pub(super) fn start(
        net: &Net,
        server_name: &str,
        request: Bytes,
    ) -> Result<(Box<Self>, Bytes), String> {
        let config = net.tls.as_ref().ok_or("no TLS configuration")?;
        let (session, hello) = ClientTls::start(config, server_name)?;
        let tls = Box::new(Self {
            session,
            out: Vec::new(),
            sending: None,
            request: Some(request),
            connected_at: None,
        });
        Ok((tls, Bytes::from(hello)))
    }
}

impl Net {
    /// TCP connected: the TLS handshake's clock starts.
    pub(super) fn tls_connected(&mut self, index: usize) {
        if let Some(tls) = self.slots[index].tls.as_mut() {
            tls.connected_at = Some(Instant::now());
        }
    }

    /// Ciphertext from one receive buffer: opened, and its plaintext run through the
    /// WebSocket client; what TLS answers goes out.
    pub(super) fn tls_bytes<W: Workload>(
        &mut self,
        ops: &mut Ops,
        work: &mut W,
        index: usize,
        bytes: &[u8],
        now_ns: u64,
    ) {
        let Some(tls) = self.slots[index].tls.as_mut() else {
            return;
        };
        let mut plain = std::mem::take(&mut self.tls_plain);
        let handshaking = tls.session.is_handshaking();
        let result = tls.session.receive(bytes, &mut plain, &mut tls.out);
        if let Err(detail) = result {
            plain.clear();
            self.tls_plain = plain;
            // The alert, if any, is lost with the connection: the run counts the failure.
            self.end(ops, index, Failure::BadHandshake, detail);
            return;
        }
        if handshaking && !tls.session.is_handshaking() {
            if let Some(at) = tls.connected_at {
                self.tls_handshake.saturating_record(micros_since(at));
            }
            if tls.session.resumed() {
                self.tls_resumed += 1;
            }
            if let Some(request) = tls.request.take() {
                tls.session.encrypt(&request, &mut tls.out);
            }
        }
        self.tls_flush(ops, index);
        if !plain.is_empty() {
            self.on_plain(ops, work, index, &mut plain, now_ns);
        }
        plain.clear();
        self.tls_plain = plain;
    }

    /// Seals plaintext for the connection (frames, a close) and sends it when it can.
    pub(super) fn tls_send_plain(&mut self, ops: &mut Ops, index: usize, plain: &[u8]) {
        if let Some(tls) = self.slots[index].tls.as_mut() {
            tls.session.encrypt(plain, &mut tls.out);
            self.tls_flush(ops, index);
        }
    }

    /// Hands the waiting ciphertext to a send, unless one is in flight.
    pub(super) fn tls_flush(&mut self, ops: &mut Ops, index: usize) {
        let slot = &mut self.slots[index];
        let generation = slot.generation;
        let Some(tls) = slot.tls.as_mut() else { return };
        if tls.out.is_empty() || ops.send_in_flight(index as u32) {
            return;
        }
        let bytes = Bytes::from(std::mem::take(&mut tls.out));
        tls.sending = Some(bytes.clone());
        self.send(ops, index, generation, bytes);
    }

    /// A TLS send completed; returns false if the send was not one of the TLS layer's (the
    /// open chain's ClientHello).
    pub(super) fn tls_on_send(&mut self, ops: &mut Ops, index: usize, result: i32) -> bool {
        let slot = &mut self.slots[index];
        let generation = slot.generation;
        let Some(tls) = slot.tls.as_mut() else {
            return false;
        };
        let Some(sent) = tls.sending.take() else {
            return false;
        };
        if result < 0 {
            if result != -libc::ECANCELED {
                let detail = format!("send: {}", std::io::Error::from_raw_os_error(-result));
                self.end(ops, index, Failure::Reset, detail);
            }
            return true;
        }
        if (result as usize) < sent.len() {
            let rest = sent.slice(result as usize..);
            tls.sending = Some(rest.clone());
            self.send(ops, index, generation, rest);
            return true;
        }
        self.tls_flush(ops, index);
        if !ops.send_in_flight(index as u32) {
            if let Conn::Open(o) = &self.slots[index].conn {
                if !o.queued.is_empty() {
                    self.flush_one(ops, index);
                }
            }
        }
        true
    }
}
