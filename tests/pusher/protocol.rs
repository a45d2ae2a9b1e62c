//! The raw Pusher protocol against one node: keys, protocol versions, pings, private and
//! presence authorization, client events, resuming, apps, limits and the HTTP API's checks.

use super::*;

pub(crate) fn an_unknown_key_closes_with_4001() -> Result<()> {
    let server = pusher_server(&[])?;
    let mut client = connect(&server, "/app/nope?protocol=7")?;
    let error = read_json(&mut client)?;
    ensure!(
        error["event"] == "pusher:error" && error["data"]["code"] == 4001,
        "{error}"
    );
    ensure!(client.expect_close()?.close_code() == Some(4001));
    Ok(())
}

pub(crate) fn old_missing_and_bad_protocols_close_with_their_codes() -> Result<()> {
    let server = pusher_server(&[])?;
    for (query, code) in [("?protocol=6", 4007), ("", 4008), ("?protocol=x", 4006)] {
        let mut client = connect(&server, &format!("/app/{KEY}{query}"))?;
        ensure!(client.expect_close()?.close_code() == Some(code), "{query}");
    }
    // A path that is not /app/KEY is no WebSocket of ours.
    let mut raw = RawClient::connect(server.addr())?;
    raw.send(upgrade_request(server.addr(), SAMPLE_KEY).as_bytes())?;
    ensure!(raw.read_http_head()?.status == 404);
    Ok(())
}

pub(crate) fn ping_pong_and_socket_ids_differ() -> Result<()> {
    let server = pusher_server(&[])?;
    let (mut a, id_a) = established(&server)?;
    let (_b, id_b) = established(&server)?;
    ensure!(id_a != id_b);
    send_json(&mut a, &json!({"event": "pusher:ping", "data": {}}))?;
    ensure!(read_json(&mut a)?["event"] == "pusher:pong");
    // Not JSON: an error, and the connection stays.
    a.send(&client_frame(OpCode::Text, true, b"nonsense"))?;
    ensure!(read_json(&mut a)?["event"] == "pusher:error");
    send_json(&mut a, &json!({"event": "pusher:ping", "data": {}}))?;
    ensure!(read_json(&mut a)?["event"] == "pusher:pong");
    Ok(())
}

pub(crate) fn private_auth_is_checked_and_client_events_are_rate_limited() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("uringcast-pusher-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let apps = dir.join("apps.json");
    std::fs::write(
        &apps,
        json!({"apps": [{"id": APP_ID, "key": KEY, "secret": SECRET,
                         "limits": {"client_events_per_second": 2}}]})
        .to_string(),
    )?;
    let server = Server::start(&[
        "--mode",
        "pusher",
        "--workers",
        "2",
        "--apps",
        apps.to_str().unwrap_or_default(),
    ])?;
    let (mut a, id_a) = established(&server)?;
    let (mut b, id_b) = established(&server)?;
    // Another socket's signature is refused.
    let stolen = subscribe_private(&mut a, &id_b, "private-x", None)?;
    ensure!(
        stolen["event"] == "pusher:subscription_error" && stolen["data"]["status"] == 401,
        "{stolen}"
    );
    ensure!(
        subscribe_private(&mut a, &id_a, "private-x", None)?["event"]
            == "pusher_internal:subscription_succeeded"
    );
    ensure!(
        subscribe_private(&mut b, &id_b, "private-x", None)?["event"]
            == "pusher_internal:subscription_succeeded"
    );
    // A public channel takes no client events.
    send_json(
        &mut a,
        &json!({"event": "pusher:subscribe", "data": {"channel": "public"}}),
    )?;
    ensure!(read_json(&mut a)?["event"] == "pusher_internal:subscription_succeeded");
    send_json(
        &mut a,
        &json!({"event": "client-x", "channel": "public", "data": {}}),
    )?;
    ensure!(read_json(&mut a)?["event"] == "pusher:error");
    // Two per second pass, the third is refused with 4301.
    for n in 0..3 {
        send_json(
            &mut a,
            &json!({"event": "client-x", "channel": "private-x", "data": {"n": n}}),
        )?;
    }
    let limited = read_json(&mut a)?;
    ensure!(
        limited["event"] == "pusher:error" && limited["data"]["code"] == 4301,
        "{limited}"
    );
    for n in 0..2 {
        let got = read_json(&mut b)?;
        ensure!(
            got == json!({"event": "client-x", "channel": "private-x", "data": {"n": n}}),
            "{got}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

pub(crate) fn client_events_skip_their_sender_with_history_on() -> Result<()> {
    // With history every publish, the sender's own worker included, goes through the
    // mailboxes in offset order: the exclusion must ride along.
    let server = pusher_server(&["--history", "10"])?;
    let (mut a, id_a) = established(&server)?;
    let (mut b, id_b) = established(&server)?;
    for (client, id) in [(&mut a, &id_a), (&mut b, &id_b)] {
        let ok = subscribe_private(client, id, "private-h", None)?;
        ensure!(
            ok["event"] == "pusher_internal:subscription_succeeded",
            "{ok}"
        );
    }
    for n in 0..3 {
        send_json(
            &mut a,
            &json!({"event": "client-a", "channel": "private-h", "data": n}),
        )?;
        send_json(
            &mut b,
            &json!({"event": "client-b", "channel": "private-h", "data": n}),
        )?;
        // Each gets the other's event next, never its own.
        ensure!(read_json(&mut a)?["event"] == "client-b");
        ensure!(read_json(&mut b)?["event"] == "client-a");
    }
    Ok(())
}

pub(crate) fn a_resumed_subscription_gets_exactly_the_missed_events_first() -> Result<()> {
    let server = pusher_server(&["--history", "100"])?;
    let (mut a, _) = established(&server)?;
    let ok = subscribe_resuming(&mut a, "resume-a", None)?;
    // A fresh subscription tells where its live events start.
    ensure!(ok["offset"] == 0, "{ok}");
    let epoch = ok["epoch"].as_str().context("no epoch")?.to_owned();
    for n in 1..=3 {
        ensure!(trigger(&server, "resume-a", "news", &n.to_string())? == 200);
    }
    for n in 1..=3u64 {
        ensure!(read_event(&mut a)? == (n.to_string(), n, epoch.clone()));
    }
    drop(a);
    for n in 4..=5 {
        ensure!(trigger(&server, "resume-a", "news", &n.to_string())? == 200);
    }
    let (mut b, _) = established(&server)?;
    let ok = subscribe_resuming(
        &mut b,
        "resume-a",
        Some(json!({"epoch": epoch, "offset": 3})),
    )?;
    ensure!(ok.get("offset").is_none(), "an exact resume replays: {ok}");
    ensure!(trigger(&server, "resume-a", "news", "6")? == 200);
    for n in 4..=6u64 {
        ensure!(read_event(&mut b)? == (n.to_string(), n, epoch.clone()));
    }
    // Another epoch (the node restarted) while this one is kept from its start: resume_failed
    // at the epoch's start, before the whole epoch, then live events.
    let (mut d, _) = established(&server)?;
    let ok = subscribe_resuming(
        &mut d,
        "resume-a",
        Some(json!({"epoch": "other", "offset": 9})),
    )?;
    ensure!(ok["offset"] == 0 && ok["epoch"] == epoch.as_str(), "{ok}");
    let failed = read_json(&mut d)?;
    ensure!(failed["event"] == "uringcast:resume_failed", "{failed}");
    let head: Value = serde_json::from_str(failed["data"].as_str().unwrap_or_default())?;
    ensure!(head == json!({"epoch": epoch, "offset": 0}), "{head}");
    ensure!(trigger(&server, "resume-a", "news", "7")? == 200);
    for n in 1..=7u64 {
        ensure!(read_event(&mut d)? == (n.to_string(), n, epoch.clone()));
    }
    // Another epoch, or a malformed position: resume_failed, then live events.
    let (mut c, _) = established(&server)?;
    for resume in [json!({"epoch": "other", "offset": 1}), json!("3")] {
        let ok = subscribe_resuming(&mut c, "resume-c", Some(resume))?;
        ensure!(ok["offset"] == 0, "{ok}");
        let failed = read_json(&mut c)?;
        ensure!(
            failed["event"] == "uringcast:resume_failed" && failed["channel"] == "resume-c",
            "{failed}"
        );
        let head: Value = serde_json::from_str(failed["data"].as_str().unwrap_or_default())?;
        ensure!(head["offset"] == 0 && head["epoch"].is_string(), "{head}");
        send_json(
            &mut c,
            &json!({"event": "pusher:unsubscribe", "data": {"channel": "resume-c"}}),
        )?;
    }
    Ok(())
}

pub(crate) fn without_history_a_resume_fails_and_events_carry_no_position() -> Result<()> {
    let server = pusher_server(&[])?;
    let (mut a, _) = established(&server)?;
    let ok = subscribe_resuming(&mut a, "plain", Some(json!({"epoch": "e", "offset": 1})))?;
    ensure!(ok.get("offset").is_none(), "{ok}");
    let failed = read_json(&mut a)?;
    ensure!(failed["event"] == "uringcast:resume_failed", "{failed}");
    ensure!(failed["data"] == "{}", "{failed}");
    ensure!(trigger(&server, "plain", "news", "1")? == 200);
    let event = read_json(&mut a)?;
    ensure!(
        event["event"] == "news" && event.get("offset").is_none(),
        "{event}"
    );
    Ok(())
}

pub(crate) fn a_presence_channel_does_not_resume() -> Result<()> {
    let server = pusher_server(&["--history", "100"])?;
    let (mut a, id) = established(&server)?;
    let channel = "presence-r";
    let member = r#"{"user_id":"u1"}"#;
    let auth = format!(
        "{KEY}:{}",
        sign(SECRET, &format!("{id}:{channel}:{member}"))
    );
    send_json(
        &mut a,
        &json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth,
            "channel_data": member, "resume": {"epoch": "e", "offset": 0}}}),
    )?;
    ensure!(read_json(&mut a)?["event"] == "pusher_internal:subscription_succeeded");
    let failed = read_json(&mut a)?;
    ensure!(failed["event"] == "uringcast:resume_failed", "{failed}");
    Ok(())
}

pub(crate) fn a_silent_connection_is_pinged_then_closed_with_4201() -> Result<()> {
    let server = pusher_server(&["--ping-interval", "0.3"])?;
    let (mut silent, _) = established(&server)?;
    let (mut answering, _) = established(&server)?;
    // One that answers each pusher:ping with pusher:pong stays, ping after ping.
    for _ in 0..3 {
        let ping = read_json(&mut answering)?;
        ensure!(ping["event"] == "pusher:ping", "{ping}");
        send_json(&mut answering, &json!({"event": "pusher:pong", "data": {}}))?;
    }
    // The silent one is pinged once (a text event, not a WebSocket ping), then closed.
    let ping = read_json(&mut silent)?;
    ensure!(ping["event"] == "pusher:ping", "{ping}");
    ensure!(silent.expect_close()?.close_code() == Some(4201));
    Ok(())
}

pub(crate) fn two_apps_never_share_a_channel() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("uringcast-pusher-apps-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let apps = dir.join("apps.json");
    std::fs::write(
        &apps,
        json!({"apps": [{"id": APP_ID, "key": KEY, "secret": SECRET},
                        {"id": "other", "key": "other-key", "secret": "other-secret"}]})
        .to_string(),
    )?;
    let server = Server::start(&[
        "--mode",
        "pusher",
        "--workers",
        "2",
        "--apps",
        apps.to_str().unwrap_or_default(),
    ])?;
    let (mut mine, _) = established(&server)?;
    let mut theirs = connect(&server, "/app/other-key?protocol=7")?;
    ensure!(read_json(&mut theirs)?["event"] == "pusher:connection_established");
    for client in [&mut mine, &mut theirs] {
        send_json(
            client,
            &json!({"event": "pusher:subscribe", "data": {"channel": "news"}}),
        )?;
        ensure!(read_json(client)?["event"] == "pusher_internal:subscription_succeeded");
    }
    // An event on app 42's `news` is not the other app's `news`: its first message is its own.
    ensure!(trigger(&server, "news", "for-42", "x")? == 200);
    ensure!(read_json(&mut mine)?["event"] == "for-42");
    // App 42's signature does not open the other app's API.
    let mut client = RawClient::connect(server.addr())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let query = format!("auth_key={KEY}&auth_timestamp={now}&auth_version=1.0");
    let to_sign = format!("GET\n/apps/other/channels\n{query}");
    client.send(
        format!(
            "GET /apps/other/channels?{query}&auth_signature={} HTTP/1.1\r\nHost: x\r\n\r\n",
            sign(SECRET, &to_sign)
        )
        .as_bytes(),
    )?;
    ensure!(client.read_http_head()?.status == 401);
    send_json(&mut theirs, &json!({"event": "pusher:ping", "data": {}}))?;
    ensure!(
        read_json(&mut theirs)?["event"] == "pusher:pong",
        "the other app got app 42's event"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

pub(crate) fn an_app_over_its_connection_quota_closes_with_4004() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("uringcast-pusher-quota-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let apps = dir.join("apps.json");
    std::fs::write(
        &apps,
        json!({"apps": [{"id": APP_ID, "key": KEY, "secret": SECRET,
                         "limits": {"max_connections": 1}}]})
        .to_string(),
    )?;
    let server = Server::start(&[
        "--mode",
        "pusher",
        "--workers",
        "2",
        "--apps",
        apps.to_str().unwrap_or_default(),
    ])?;
    let (mut first, _) = established(&server)?;
    let mut second = connect(&server, &format!("/app/{KEY}?protocol=7"))?;
    let error = read_json(&mut second)?;
    ensure!(error["data"]["code"] == 4004, "{error}");
    ensure!(second.expect_close()?.close_code() == Some(4004));
    ensure!(metric(&server, "uringcast_pusher_connections")? == 1.0);
    // Once the first has gone, there is room again.
    first.send_close(1000, "")?;
    first.expect_close()?;
    drop(first);
    wait_for("the connection released", || {
        Ok(metric(&server, "uringcast_pusher_connections")? == 0.0)
    })?;
    established(&server)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

pub(crate) fn every_subscription_limit_answers_with_its_status() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("uringcast-pusher-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let apps = dir.join("apps.json");
    std::fs::write(
        &apps,
        json!({"apps": [{"id": APP_ID, "key": KEY, "secret": SECRET,
                         "limits": {"max_presence_members": 1, "max_presence_info_bytes": 16,
                                    "max_channels_per_connection": 3}}]})
        .to_string(),
    )?;
    let server = Server::start(&[
        "--mode",
        "pusher",
        "--workers",
        "2",
        "--apps",
        apps.to_str().unwrap_or_default(),
    ])?;
    let (mut a, id_a) = established(&server)?;
    let (mut b, id_b) = established(&server)?;
    let status = |reply: &Value| reply["data"]["status"].as_u64();
    // A bad name.
    send_json(
        &mut a,
        &json!({"event": "pusher:subscribe", "data": {"channel": "a b"}}),
    )?;
    let reply = read_json(&mut a)?;
    ensure!(
        reply["event"] == "pusher:subscription_error" && status(&reply) == Some(400),
        "{reply}"
    );
    // Presence: user_info over 16 bytes, then a full channel for a second user.
    let big = r#"{"user_id":"1","user_info":{"name":"a name of more than sixteen bytes"}}"#;
    ensure!(status(&subscribe_private(&mut a, &id_a, "presence-p", Some(big))?) == Some(400));
    let one = r#"{"user_id":"1"}"#;
    let ok = subscribe_private(&mut a, &id_a, "presence-p", Some(one))?;
    ensure!(
        ok["event"] == "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    let two = r#"{"user_id":"2"}"#;
    ensure!(status(&subscribe_private(&mut b, &id_b, "presence-p", Some(two))?) == Some(403));
    // A presence subscription whose channel_data is not what was signed.
    send_json(
        &mut b,
        &json!({"event": "pusher:subscribe", "data": {"channel": "presence-q",
                "auth": format!("{KEY}:{}", sign(SECRET, &format!("{id_b}:presence-q:{one}"))),
                "channel_data": two}}),
    )?;
    ensure!(status(&read_json(&mut b)?) == Some(401));
    // Three channels per connection, no more.
    for channel in ["c1", "c2"] {
        send_json(
            &mut a,
            &json!({"event": "pusher:subscribe", "data": {"channel": channel}}),
        )?;
        ensure!(read_json(&mut a)?["event"] == "pusher_internal:subscription_succeeded");
    }
    send_json(
        &mut a,
        &json!({"event": "pusher:subscribe", "data": {"channel": "c3"}}),
    )?;
    let reply = read_json(&mut a)?;
    ensure!(
        reply["data"]["type"] == "LimitReached" && status(&reply) == Some(400),
        "{reply}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

pub(crate) fn a_bad_signature_is_refused_before_the_body() -> Result<()> {
    let server = pusher_server(&[])?;
    let mut client = RawClient::connect(server.addr())?;
    // A head that promises a megabyte, with no body at all: the answer cannot wait for it.
    let head = format!(
        "POST /apps/{APP_ID}/events?auth_key={KEY}&auth_timestamp=1&auth_version=1.0&auth_signature=00 HTTP/1.1\r\n\
         Host: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    );
    client.send(head.as_bytes())?;
    let response = client.read_http_head()?;
    ensure!(response.status == 401, "{}", response.raw);
    let mut client = RawClient::connect(server.addr())?;
    client.send(b"GET /apps/999/channels HTTP/1.1\r\nHost: x\r\n\r\n")?;
    ensure!(client.read_http_head()?.status == 404);
    // Server-Sent Events would read a private channel with no signature: never served.
    let mut client = RawClient::connect(server.addr())?;
    client.send(
        format!("GET /{APP_ID}:private-x HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )?;
    ensure!(client.read_http_head()?.status == 404);
    // The engine's own endpoints are still served.
    let mut client = RawClient::connect(server.addr())?;
    client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
    ensure!(client.read_http_head()?.status == 200);
    Ok(())
}

pub(crate) fn missing_app_settings_exit_2_with_one_line() -> Result<()> {
    for args in [
        vec!["--mode", "pusher"],
        vec!["--mode", "pusher", "--app-id", "1", "--app-key", "k"],
        vec![
            "--mode",
            "pusher",
            "--app-id",
            "a:b",
            "--app-key",
            "k",
            "--app-secret",
            "s",
        ],
        vec!["--mode", "pusher", "--apps", "/nonexistent/apps.json"],
        vec!["--mode", "echo", "--app-id", "1"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_uringcast"))
            .args(&args)
            .env_remove("URINGCAST_APP_SECRET")
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.code() == Some(2),
            "{args:?}: {:?}",
            output.status
        );
        ensure!(stderr.trim().lines().count() == 1, "{args:?}: {stderr}");
    }
    Ok(())
}
