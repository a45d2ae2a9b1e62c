//! Alerts after the handshake (RFC 8446 §6; issue 21, defects 3 and 7): a fatal one reaches
//! the peer before the close, and the peer's close_notify is answered with ours after what
//! was queued.

use super::*;

const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

/// A record that does not authenticate, on TLS 1.3 (uringcast's record layer) and TLS 1.2
/// (rustls's): the client receives bad_record_mac, then the close. The alert used to be
/// dropped with the close_notify that could not be sealed on the dead session.
pub(crate) fn a_bad_record_after_the_handshake_gets_its_alert() -> Result<()> {
    let cert = TestCert::new("alert-after-handshake")?;
    let server = start(&cert, &["--mode", "echo", "--workers", "1"])?;
    for version in VERSIONS {
        let (mut tcp, mut conn) = handshaken(server.addr(), client_for_version(&cert, version)?)?;
        conn.writer().write_all(b"GET / HTTP/1.1\r\n\r\n")?;
        let mut record = tls_out(&mut conn)?;
        *record.last_mut().context("no record")? ^= 1;
        tcp.write_all(&record)?;
        let (got, _) = hostile::read_until_closed(&mut tcp)?;
        let (_, ended) = tls_in(&mut conn, &got);
        ensure!(
            ended
                == Err(rustls::Error::AlertReceived(
                    rustls::AlertDescription::BadRecordMac
                )),
            "{version:?}: the client saw {ended:?} in {} bytes",
            got.len()
        );
    }
    Ok(())
}

/// An upgrade, a message and close_notify in one write: the server answers the upgrade,
/// echoes the message, then sends its own close_notify (RFC 8446 §6.1), on either version.
/// It used to tear the connection down at once, dropping both.
pub(crate) fn close_notify_is_answered_after_what_was_queued() -> Result<()> {
    let cert = TestCert::new("close-notify")?;
    let server = start(&cert, &["--mode", "echo", "--workers", "1"])?;
    let addr = server.addr();
    for version in VERSIONS {
        let (mut tcp, mut conn) = handshaken(addr, client_for_version(&cert, version)?)?;
        conn.writer()
            .write_all(common::upgrade_request(addr, common::SAMPLE_KEY).as_bytes())?;
        conn.writer().write_all(&common::client_frame(
            uringcast::protocol::frame::OpCode::Text,
            true,
            b"hi",
        ))?;
        conn.send_close_notify();
        tcp.write_all(&tls_out(&mut conn)?)?;
        let (got, _) = hostile::read_until_closed(&mut tcp)?;
        let (plain, ended) = tls_in(&mut conn, &got);
        let text = String::from_utf8_lossy(&plain);
        ensure!(
            plain.starts_with(b"HTTP/1.1 101"),
            "{version:?}: no upgrade in {text:?}"
        );
        ensure!(
            plain.ends_with(&[0x81, 0x02, b'h', b'i']),
            "{version:?}: no echo in {text:?}"
        );
        ensure!(ended.is_ok(), "{version:?}: no close_notify ({ended:?})");
    }
    Ok(())
}
