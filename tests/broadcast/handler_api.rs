//! The Handler API: `on_upgrade` (rejection, subprotocols), unsubscribe, close, `on_close`.

use super::*;

// ---------------------------------------------------------------------------------------------
// 6. on_upgrade: rejection and subprotocols
// ---------------------------------------------------------------------------------------------

/// Upgrades only with `?token=ok`; picks `superchat` when offered; echoes messages.
#[derive(Clone)]
pub(crate) struct Gate;

impl Handler for Gate {
    type Data = ();

    fn on_upgrade(&mut self, request: &Request) -> Decision {
        let admitted = request
            .query()
            .is_some_and(|query| query.split('&').any(|pair| pair == "token=ok"));
        if !admitted {
            return Decision::Reject(403);
        }
        match request.protocols().find(|p| *p == "superchat") {
            Some(protocol) => Decision::AcceptProtocol(protocol.to_string()),
            None => Decision::Accept,
        }
    }

    fn on_message(&mut self, conn: &mut Connection<'_, ()>, message: Message<'_>) {
        conn.send(message.opcode, message.payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn on_upgrade_rejects_accepts_and_chooses_a_subprotocol() -> Result<()> {
    let server = InProcess::start(1, Gate)?;
    let addr = server.local_addr();
    let raw = |target: &str, protocols: Option<&str>| -> Result<(HttpHead, RawClient)> {
        let mut client = RawClient::connect(addr)?;
        let mut request =
            upgrade_request(addr, SAMPLE_KEY).replacen("GET /chat ", &format!("GET {target} "), 1);
        if let Some(protocols) = protocols {
            request.insert_str(
                request.len() - 2,
                &format!("Sec-WebSocket-Protocol: {protocols}\r\n"),
            );
        }
        client.send(request.as_bytes())?;
        let head = client.read_http_head()?;
        Ok((head, client))
    };
    for target in [
        "/chat",
        "/chat?token=no",
        "/chat?tok=ok",
        "/chat?token=okay",
    ] {
        let (head, mut client) = raw(target, None)?;
        ensure!(
            head.status == 403,
            "{target}: expected 403, got:\n{}",
            head.raw
        );
        ensure!(
            head.header("Sec-WebSocket-Accept").is_none(),
            "{target}: a 403 with an accept key:\n{}",
            head.raw
        );
        client
            .read_to_end()
            .context("the connection should end after the 403")?;
    }
    let (head, _client) = raw("/chat?x=1&token=ok", None)?;
    ensure!(
        head.status == 101,
        "token=ok: expected 101, got:\n{}",
        head.raw
    );
    ensure!(
        head.header("Sec-WebSocket-Protocol").is_none(),
        "no protocol offered, yet one chosen:\n{}",
        head.raw
    );
    let (head, _client) = raw("/chat?token=ok", Some("chat"))?;
    ensure!(head.status == 101, "{}", head.raw);
    ensure!(
        head.header("Sec-WebSocket-Protocol").is_none(),
        "`chat` offered, yet a protocol was chosen:\n{}",
        head.raw
    );
    let (head, _client) = raw("/chat?token=ok", Some("chat, superchat"))?;
    ensure!(head.status == 101, "{}", head.raw);
    ensure!(
        head.header("Sec-WebSocket-Protocol") == Some("superchat"),
        "expected Sec-WebSocket-Protocol: superchat in:\n{}",
        head.raw
    );

    // An independent client checks the same answer and then talks over it.
    let mut request = format!("ws://{addr}/chat?token=ok").into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("chat, superchat"),
    );
    let (mut ws, response) = timeout(
        STEP,
        tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true),
    )
    .await
    .context("connect timed out")??;
    ensure!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .is_some_and(|v| v == "superchat"),
        "tungstenite saw {:?}",
        response.headers()
    );
    send_text(&mut ws, "through the gate").await?;
    ensure!(next_text(&mut ws).await? == "through the gate");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. the Handler API: unsubscribe, close, on_close
// ---------------------------------------------------------------------------------------------

/// A room driven by commands: `say:X` publishes `NAME:X` to the room, `unsub`/`sub` leave and
/// rejoin it (acknowledged), `echo:X` sends X back, `close` closes with 4000 "bye". Every
/// connection joins on open; on close, `left:NAME` goes to the room.
#[derive(Clone)]
pub(crate) struct Commands;

impl Handler for Commands {
    type Data = String;

    fn on_open(&mut self, conn: &mut Connection<'_, String>, request: &Request) {
        *conn.data() = request.path().trim_start_matches('/').to_string();
        conn.subscribe("room")
            .expect("a short topic is within every limit");
    }

    fn on_message(&mut self, conn: &mut Connection<'_, String>, message: Message<'_>) {
        let Some(text) = message.as_text() else {
            return;
        };
        if let Some(said) = text.strip_prefix("say:") {
            let line = format!("{}:{said}", conn.data());
            conn.publish("room", OpCode::Text, line.as_bytes());
        } else if let Some(echo) = text.strip_prefix("echo:") {
            conn.send(OpCode::Text, echo.as_bytes());
        } else if text == "unsub" {
            conn.unsubscribe("room");
            conn.send(OpCode::Text, b"unsubscribed");
        } else if text == "sub" {
            conn.subscribe("room")
                .expect("a short topic is within every limit");
            conn.send(OpCode::Text, b"subscribed");
        } else if text == "close" {
            conn.close(CloseCode(4000), "bye");
        }
    }

    fn on_close(&mut self, conn: &mut Connection<'_, String>) {
        let line = format!("left:{}", conn.data());
        conn.publish("room", OpCode::Text, line.as_bytes());
    }
}

/// One worker, so a publish and a later direct send to the same connection are ordered by
/// its queue: a marker sent after a publish arriving first proves the publish never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn handler_unsubscribe_close_and_on_close() -> Result<()> {
    let server = InProcess::start(1, Commands)?;
    let addr = server.local_addr();
    let mut alice = ws_at(addr, "/alice").await?;
    let mut bob = ws_at(addr, "/bob").await?;
    let mut carol = ws_at(addr, "/carol").await?;

    send_text(&mut alice, "unsub").await?;
    ensure!(next_text(&mut alice).await? == "unsubscribed");
    send_text(&mut bob, "say:hi").await?;
    ensure!(next_text(&mut bob).await? == "bob:hi");
    ensure!(next_text(&mut carol).await? == "bob:hi");
    send_text(&mut alice, "echo:marker-1").await?;
    let got = next_text(&mut alice).await?;
    ensure!(
        got == "marker-1",
        "alice unsubscribed, yet received {got:?}"
    );

    // A close from the handler: carol gets 4000 "bye"; on_close tells the room.
    send_text(&mut carol, "close").await?;
    match next_ws(&mut carol).await? {
        WsMessage::Close(Some(frame)) => {
            ensure!(
                frame.code == WsCloseCode::from(4000) && frame.reason == "bye",
                "carol's close frame: {frame:?}"
            );
        }
        other => bail!("carol expected a close frame, got {other:?}"),
    }
    ensure!(next_text(&mut bob).await? == "left:carol");
    send_text(&mut alice, "echo:marker-2").await?;
    let got = next_text(&mut alice).await?;
    ensure!(
        got == "marker-2",
        "alice unsubscribed, yet received {got:?}"
    );

    // Rejoining works, and a client-initiated close also runs on_close.
    send_text(&mut alice, "sub").await?;
    ensure!(next_text(&mut alice).await? == "subscribed");
    timeout(STEP, bob.close(None)).await??;
    ensure!(next_text(&mut alice).await? == "left:bob");
    Ok(())
}
