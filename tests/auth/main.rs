//! Who may subscribe and publish, and the caps on addresses, connections and the server:
//! the `uringcast` binary in `--mode broadcast`, on `127.0.0.1:0`, driven by raw clients that
//! assert exact HTTP statuses and close codes. Nothing sleeps: every wait is a read bounded
//! by the client's timeout.

#[path = "../common/mod.rs"]
mod common;
mod limits;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use uringcast::protocol::OpCode;

const SECRET: &str = "test secret, long enough";

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// An HS256 token over `claims`, signed with `secret`.
pub(crate) fn jwt(secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).expect("a non-empty secret"),
    )
    .expect("HS256 signs")
}

/// Sends an upgrade request for `target` with `headers`; returns the client and the head of
/// the answer.
pub(crate) fn upgrade_at(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<(RawClient, HttpHead)> {
    let mut client = RawClient::connect(addr)?;
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    client.send(request.as_bytes())?;
    let head = client
        .read_http_head()
        .with_context(|| format!("the answer to an upgrade to {target}"))?;
    Ok((client, head))
}

/// The status an upgrade to `target` gets.
pub(crate) fn status_of(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Result<u16> {
    Ok(upgrade_at(addr, target, headers)?.1.status)
}

/// An upgraded connection to `target`.
pub(crate) fn open(addr: SocketAddr, target: &str) -> Result<RawClient> {
    let (client, head) = upgrade_at(addr, target, &[])?;
    ensure!(
        head.status == 101,
        "{target}: expected 101, got\n{}",
        head.raw
    );
    Ok(client)
}

/// The value of `uringcast_refusals_total{reason="REASON"}` in `/metrics`.
pub(crate) fn refusals(addr: SocketAddr, reason: &str) -> Result<u64> {
    let mut client = RawClient::connect(addr)?;
    client.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let (bytes, _) = client.read_to_end()?;
    let text = String::from_utf8(bytes)?;
    let needle = format!("uringcast_refusals_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&needle))
        .with_context(|| format!("no {needle:?} in /metrics:\n{text}"))?
        .trim()
        .parse()
        .context("a count")
}

/// The close code and reason of the close frame the server sends next.
pub(crate) fn close_of(client: &mut RawClient) -> Result<(Option<u16>, String)> {
    let frame = client.expect_close()?;
    let reason = String::from_utf8_lossy(frame.payload.get(2..).unwrap_or_default()).into_owned();
    Ok((frame.close_code(), reason))
}

/// With only `--publish-token`, a publish-only WebSocket needs the token (it was open to
/// anyone before), and subscribers are read-only by default: a message closes them with 1008.
#[test]
fn a_publish_token_locks_the_publish_socket_and_makes_subscribers_read_only() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "2",
        "--publish-token",
        "s3cret",
    ])?;
    let addr = server.addr();
    let mut subscriber = open(addr, "/prices")?;

    let (_, head) = upgrade_at(addr, "/publish/prices", &[])?;
    ensure!(head.status == 401, "no credential:\n{}", head.raw);
    ensure!(
        head.header("www-authenticate") == Some("Bearer"),
        "{}",
        head.raw
    );
    ensure!(status_of(addr, "/publish/prices?token=wrong", &[])? == 401);
    ensure!(
        status_of(
            addr,
            "/publish/prices",
            &[("Authorization", "Bearer s3cre")]
        )? == 401,
        "a prefix of the token"
    );

    let mut feed = open(addr, "/publish/prices?token=s3cret")?;
    feed.send(&client_frame(OpCode::Text, true, b"42.0"))?;
    ensure!(subscriber.read_message()? == (0x1, b"42.0".to_vec()));
    let (_, head) = upgrade_at(
        addr,
        "/publish/prices",
        &[("Authorization", "Bearer s3cret")],
    )?;
    ensure!(head.status == 101, "the token in a header:\n{}", head.raw);

    // The subscriber tries to publish: refused, closed with 1008, and nothing delivered.
    let mut other = open(addr, "/prices")?;
    subscriber.send(&client_frame(OpCode::Text, true, b"fake price"))?;
    let (code, reason) = close_of(&mut subscriber)?;
    ensure!(code == Some(1008), "close code {code:?}");
    ensure!(reason == "publish_denied", "close reason {reason:?}");
    feed.send(&client_frame(OpCode::Text, true, b"43.0"))?;
    ensure!(
        other.read_message()? == (0x1, b"43.0".to_vec()),
        "the fake price reached another subscriber"
    );
    ensure!(refusals(addr, "token_missing")? == 1);
    ensure!(refusals(addr, "token_invalid")? == 2);
    ensure!(refusals(addr, "publish_denied")? == 1);
    Ok(())
}

/// `--client-publish all` keeps subscribers' messages flowing next to a publish token, while
/// the publish socket still needs the token.
#[test]
fn client_publish_all_is_an_explicit_choice() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "1",
        "--publish-token",
        "s3cret",
        "--client-publish",
        "all",
    ])?;
    let addr = server.addr();
    let mut a = open(addr, "/room")?;
    let mut b = open(addr, "/room")?;
    a.send(&client_frame(OpCode::Text, true, b"hi"))?;
    ensure!(b.read_message()? == (0x1, b"hi".to_vec()));
    ensure!(status_of(addr, "/publish/room", &[])? == 401);
    Ok(())
}

/// Every way a JWT can be wrong gets 401; a valid token for other topics gets 403; a valid
/// token for the topic gets 101. All decided from the head.
#[test]
fn jwt_subscriptions_are_checked_at_the_upgrade() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "2",
        "--jwt-secret",
        SECRET,
    ])?;
    let addr = server.addr();
    let exp = now() + 300;
    let good = jwt(
        SECRET,
        json!({"exp": exp, "sub": "alice", "subscribe": ["news.*", "prices"]}),
    );

    ensure!(status_of(addr, "/prices", &[])? == 401, "no token");
    let forged = jwt("another secret", json!({"exp": exp, "subscribe": ["*"]}));
    ensure!(
        status_of(addr, &format!("/prices?token={forged}"), &[])? == 401,
        "forged"
    );
    let expired = jwt(SECRET, json!({"exp": now() - 3600, "subscribe": ["*"]}));
    ensure!(
        status_of(addr, &format!("/prices?token={expired}"), &[])? == 401,
        "expired"
    );
    let no_exp = jwt(SECRET, json!({"subscribe": ["*"]}));
    ensure!(
        status_of(addr, &format!("/prices?token={no_exp}"), &[])? == 401,
        "no exp"
    );
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &json!({"exp": exp, "subscribe": ["*"]}),
        &EncodingKey::from_secret(SECRET.as_bytes())?,
    )?;
    ensure!(
        status_of(addr, &format!("/prices?token={hs384}"), &[])? == 401,
        "HS384"
    );
    let none = {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&json!({"exp": exp, "subscribe": ["*"]}).to_string())
        )
    };
    ensure!(
        status_of(addr, &format!("/prices?token={none}"), &[])? == 401,
        "alg none"
    );

    // A valid token for other topics: 403, `news.*` does not reach `newsroom`.
    let (_, head) = upgrade_at(addr, &format!("/weather?token={good}"), &[])?;
    ensure!(head.status == 403, "another topic:\n{}", head.raw);
    ensure!(status_of(addr, &format!("/newsroom?token={good}"), &[])? == 403);
    ensure!(status_of(addr, &format!("/news?token={good}"), &[])? == 403);

    // The token for the topic: 101, by query or header.
    open(addr, &format!("/news.eu?token={good}"))?;
    let bearer = format!("Bearer {good}");
    ensure!(status_of(addr, "/prices", &[("Authorization", &bearer)])? == 101);

    ensure!(refusals(addr, "token_missing")? == 1);
    ensure!(refusals(addr, "token_invalid")? == 4);
    ensure!(refusals(addr, "token_expired")? == 1);
    ensure!(refusals(addr, "topic_not_covered")? == 3);
    Ok(())
}

/// With a JWT key, publishing follows the `publish` claim: on the publish socket, over
/// `POST /publish`, and from a subscriber (`--client-publish token`, the default then).
#[test]
fn jwt_publish_claims_decide_who_publishes() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "2",
        "--jwt-secret",
        SECRET,
    ])?;
    let addr = server.addr();
    let exp = now() + 300;
    let reader = jwt(SECRET, json!({"exp": exp, "subscribe": ["chat.*"]}));
    let writer = jwt(
        SECRET,
        json!({"exp": exp, "subscribe": ["chat.*"], "publish": ["chat.a"]}),
    );
    let mut listener = open(addr, &format!("/chat.a?token={reader}"))?;

    ensure!(
        status_of(addr, "/publish/chat.a", &[])? == 401,
        "no credential"
    );
    ensure!(
        status_of(addr, &format!("/publish/chat.a?token={reader}"), &[])? == 403,
        "a token without the publish claim"
    );
    ensure!(status_of(addr, &format!("/publish/chat.b?token={writer}"), &[])? == 403);
    let mut feed = open(addr, &format!("/publish/chat.a?token={writer}"))?;
    feed.send(&client_frame(OpCode::Text, true, b"from the feed"))?;
    ensure!(listener.read_message()? == (0x1, b"from the feed".to_vec()));

    // A subscriber whose token covers the room publishes; one whose token does not is closed.
    let mut talker = open(addr, &format!("/chat.a?token={writer}"))?;
    talker.send(&client_frame(OpCode::Text, true, b"hello"))?;
    ensure!(listener.read_message()? == (0x1, b"hello".to_vec()));
    let mut lurker = open(addr, &format!("/chat.b?token={writer}"))?;
    lurker.send(&client_frame(OpCode::Text, true, b"psst"))?;
    ensure!(close_of(&mut lurker)? == (Some(1008), "publish_denied".into()));
    listener.send(&client_frame(OpCode::Text, true, b"me too"))?;
    ensure!(close_of(&mut listener)?.0 == Some(1008));
    Ok(())
}

/// `POST /publish/<topic>` takes a JWT whose `publish` claim covers the topic.
#[test]
fn http_publish_takes_a_jwt() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "1",
        "--jwt-secret",
        SECRET,
    ])?;
    let addr = server.addr();
    let exp = now() + 300;
    let token = jwt(
        SECRET,
        json!({"exp": exp, "subscribe": ["t"], "publish": ["t"]}),
    );
    let mut subscriber = open(addr, &format!("/t?token={token}"))?;
    let post = |target: &str, auth: Option<&str>| -> Result<u16> {
        let mut client = RawClient::connect(addr)?;
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        client.send(
            format!("POST {target} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
                .as_bytes(),
        )?;
        Ok(client.read_http_head()?.status)
    };
    ensure!(post("/publish/t", None)? == 401);
    ensure!(post("/publish/u", Some(&token))? == 403);
    ensure!(post("/publish/t", Some(&token))? == 202);
    ensure!(subscriber.read_message()? == (0x1, b"ok".to_vec()));
    Ok(())
}

/// Settings that cannot work are one line on stderr and exit 2.
#[test]
fn bad_access_settings_exit_2() -> Result<()> {
    for args in [
        &["--mode", "broadcast", "--client-publish", "token"][..],
        &[
            "--mode",
            "broadcast",
            "--jwt-public-key",
            "/nonexistent/key.pem",
        ],
        &["--mode", "echo", "--jwt-secret", "x"],
        &[
            "--mode",
            "broadcast",
            "--jwt-secret",
            "x",
            "--jwt-public-key",
            "/k.pem",
        ],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_uringcast"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.code() == Some(2),
            "{args:?}: {:?} {stderr}",
            output.status
        );
        // The first line names the setting (clap adds a usage line for its own conflicts).
        let first = stderr.lines().next().unwrap_or_default();
        ensure!(
            first.contains("--jwt") || first.contains("--client-publish"),
            "{args:?}: {stderr}"
        );
    }
    Ok(())
}

/// A connection whose token expires keeps its subscription, but its next publish closes it
/// with 1008 `token_expired`: a subscriber's and a publish-only connection's alike.
#[test]
fn an_expired_token_can_no_longer_publish() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "1",
        "--jwt-secret",
        SECRET,
    ])?;
    let addr = server.addr();
    // Still inside the 30 s leeway at the upgrade, past it 2 to 3 s later.
    let exp = now() - 28;
    let token = jwt(
        SECRET,
        json!({"exp": exp, "subscribe": ["t"], "publish": ["t"]}),
    );
    let mut subscriber = open(addr, &format!("/t?token={token}"))?;
    let mut feed = open(addr, &format!("/publish/t?token={token}"))?;
    feed.send(&client_frame(OpCode::Text, true, b"in time"))?;
    ensure!(subscriber.read_message()? == (0x1, b"in time".to_vec()));
    // Time itself is the signal here: wait until the token is past its leeway.
    while now() <= exp + 30 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    feed.send(&client_frame(OpCode::Text, true, b"too late"))?;
    ensure!(close_of(&mut feed)? == (Some(1008), "token_expired".into()));
    subscriber.send(&client_frame(OpCode::Text, true, b"too late"))?;
    ensure!(close_of(&mut subscriber)? == (Some(1008), "token_expired".into()));
    ensure!(refusals(addr, "token_expired")? == 2);
    Ok(())
}
