//! Across nodes: events, exclusions, presence, channel counts, webhooks and resuming
//! through a broker (Redis, and every other broker the machine has).

use super::*;

// ---------------------------------------------------------------------------------------------
// Across nodes
// ---------------------------------------------------------------------------------------------

pub(crate) fn events_and_exclusions_cross_nodes_on_redis() -> Result<()> {
    let Some(broker) = brokers::Broker::start(
        brokers::Kind::Redis,
        "events_and_exclusions_cross_nodes_on_redis",
    )?
    else {
        return Err(skip("redis-server missing (scripts/brokers.sh install)"));
    };
    let url = broker.url();
    let one = pusher_server(&["--broker", &url])?;
    let two = pusher_server(&["--broker", &url])?;
    let (mut a, id_a) = established(&one)?;
    let (mut b, id_b) = established(&two)?;
    for (client, id) in [(&mut a, &id_a), (&mut b, &id_b)] {
        let ok = subscribe_private(client, id, "private-x", None)?;
        ensure!(
            ok["event"] == "pusher_internal:subscription_succeeded",
            "{ok}"
        );
    }
    // Both nodes hold the topic at the broker before anything is published.
    // Each node also holds the presence side channel's topic.
    wait_for("the nodes subscribed at the broker", || {
        Ok(metric(&one, "uringcast_broker_subscribed_topics")? >= 2.0
            && metric(&two, "uringcast_broker_subscribed_topics")? >= 2.0)
    })?;
    // An API event on one node reaches the other's subscriber, and a client event too.
    ensure!(trigger(&two, "private-x", "from-two", "hi")? == 200);
    let got = read_json(&mut a)?;
    ensure!(got["event"] == "from-two" && got["data"] == "hi", "{got}");
    ensure!(read_json(&mut b)?["event"] == "from-two");
    send_json(
        &mut a,
        &json!({"event": "client-x", "channel": "private-x", "data": {"n": 1}}),
    )?;
    let got = read_json(&mut b)?;
    ensure!(
        got["event"] == "client-x" && got["data"] == json!({"n": 1}),
        "{got}"
    );
    // socket_id exclusion holds across nodes: an event triggered on node two that names a
    // connection of node one skips it there; a marker shows it never came.
    ensure!(trigger_except(&two, "private-x", "not-for-a", "x", Some(&id_a))? == 200);
    ensure!(read_json(&mut b)?["event"] == "not-for-a");
    ensure!(trigger(&two, "private-x", "marker", "x")? == 200);
    ensure!(read_json(&mut b)?["event"] == "marker");
    let first = read_json(&mut a)?;
    ensure!(
        first["event"] == "marker",
        "the excluded connection got {first}"
    );
    // terminate_connections on node two closes the user's connection on node one.
    let (mut c, id_c) = established(&one)?;
    let user_data = r#"{"id":"far-user"}"#;
    let auth = format!(
        "{KEY}:{}",
        sign(SECRET, &format!("{id_c}::user::{user_data}"))
    );
    send_json(
        &mut c,
        &json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}),
    )?;
    ensure!(read_json(&mut c)?["event"] == "pusher:signin_success");
    wait_for("node one subscribed to the user's topic", || {
        Ok(metric(&one, "uringcast_broker_subscribed_topics")? >= 3.0)
    })?;
    let path = format!("/apps/{APP_ID}/users/far-user/terminate_connections");
    ensure!(signed_post(&two, &path, "{}")? == 200);
    ensure!(c.expect_close()?.close_code() == Some(4009));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Presence, channel counts and webhooks across nodes
// ---------------------------------------------------------------------------------------------

/// A signed `GET` of the API: the status and the JSON body (`null` when not JSON).
fn signed_get(server: &Server, path: &str, extra: &str) -> Result<(u16, Value)> {
    use uringcast::pusher::signing::{parse_query, string_to_sign};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut query = format!("auth_key={KEY}&auth_timestamp={now}&auth_version=1.0");
    if !extra.is_empty() {
        query = format!("{query}&{extra}");
    }
    let signature = sign(SECRET, &string_to_sign("GET", path, &parse_query(&query)?));
    let mut client = RawClient::connect(server.addr())?;
    client.send(
        format!("GET {path}?{query}&auth_signature={signature} HTTP/1.1\r\nHost: x\r\n\r\n")
            .as_bytes(),
    )?;
    let (bytes, _) = client.read_to_end()?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// A channel's `{occupied, subscription_count, user_count}` as `server` answers it.
fn channel_counts(server: &Server, channel: &str) -> Result<Value> {
    let path = format!("/apps/{APP_ID}/channels/{channel}");
    let info = if channel.starts_with("presence-") {
        "info=subscription_count,user_count"
    } else {
        "info=subscription_count"
    };
    let (status, body) = signed_get(server, &path, info)?;
    ensure!(status == 200, "{path}: {status} {body}");
    Ok(body)
}

/// Two nodes on one broker that know each other's state.
fn two_nodes(url: &str, extra: &[&str]) -> Result<(Server, Server)> {
    let mut args = vec!["--broker", url];
    args.extend_from_slice(extra);
    let one = pusher_server(&args)?;
    let two = pusher_server(&args)?;
    wait_for("the nodes know each other", || {
        Ok(metric(&one, "uringcast_pusher_cluster_nodes")? >= 1.0
            && metric(&two, "uringcast_pusher_cluster_nodes")? >= 1.0)
    })?;
    Ok((one, two))
}

/// Subscribes `client` to a presence channel as `user`; returns `subscription_succeeded`'s
/// `{ids, hash, count}`.
fn join_presence(
    client: &mut RawClient,
    socket_id: &str,
    channel: &str,
    user: &str,
) -> Result<Value> {
    let data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
    let ok = subscribe_private(client, socket_id, channel, Some(&data))?;
    ensure!(
        ok["event"] == "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    let data: Value = serde_json::from_str(ok["data"].as_str().unwrap_or("{}"))?;
    Ok(data["presence"].clone())
}

fn unsubscribe(client: &mut RawClient, channel: &str) -> Result<()> {
    send_json(
        client,
        &json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}),
    )
}

/// Each broker the machine has, as `(kind, url)`; prints SKIP for the others. The test ran
/// if at least one broker did; with none installed, it is a [`Skip`] (shown as ignored).
fn each_broker(test: &str, mut run: impl FnMut(brokers::Kind, &str) -> Result<()>) -> Result<()> {
    let mut missing = Vec::new();
    for kind in brokers::Kind::ALL {
        let Some(broker) = brokers::Broker::start(kind, test)? else {
            eprintln!("SKIP {test} ({kind:?}): its broker is not installed");
            missing.push(format!("{kind:?}"));
            continue;
        };
        run(kind, &broker.url()).with_context(|| format!("on {kind:?}"))?;
    }
    if missing.len() == brokers::Kind::ALL.len() {
        return Err(skip(format!(
            "no broker installed ({}; scripts/brokers.sh install)",
            missing.join(", ")
        )));
    }
    Ok(())
}

pub(crate) fn presence_and_channel_counts_are_the_clusters() -> Result<()> {
    each_broker("presence_and_channel_counts_are_the_clusters", |_, url| {
        let (one, two) = two_nodes(url, &[])?;
        let room = "presence-room";
        let (mut watcher, id_w) = established(&one)?;
        ensure!(join_presence(&mut watcher, &id_w, room, "watcher")?["count"] == 1);
        // The user's first tab, on node one.
        let (mut tab1, id1) = established(&one)?;
        join_presence(&mut tab1, &id1, room, "u")?;
        let added = read_json(&mut watcher)?;
        ensure!(added["event"] == "pusher_internal:member_added", "{added}");
        // Node two counts node one's members and subscriptions.
        wait_for("node two counts node one's", || {
            let counts = channel_counts(&two, room)?;
            Ok(counts["user_count"] == 2 && counts["subscription_count"] == 2)
        })?;
        // The second tab, on node two: the members are the cluster's, and nobody hears of
        // the user again.
        let (mut tab2, id2) = established(&two)?;
        let data = join_presence(&mut tab2, &id2, room, "u")?;
        ensure!(data["count"] == 2, "{data}");
        ensure!(data["ids"] == json!(["u", "watcher"]), "{data}");
        ensure!(
            data["hash"]["watcher"] == json!({"name": "watcher"}),
            "{data}"
        );
        for node in [&one, &two] {
            wait_for("both nodes count three subscriptions", || {
                let counts = channel_counts(node, room)?;
                Ok(counts["user_count"] == 2 && counts["subscription_count"] == 3)
            })?;
        }
        let (status, list) = signed_get(
            &two,
            &format!("/apps/{APP_ID}/channels"),
            "filter_by_prefix=presence-&info=user_count",
        )?;
        ensure!(
            status == 200 && list["channels"][room]["user_count"] == 2,
            "{list}"
        );
        let (status, users) =
            signed_get(&two, &format!("/apps/{APP_ID}/channels/{room}/users"), "")?;
        ensure!(
            status == 200 && users["users"] == json!([{"id": "u"}, {"id": "watcher"}]),
            "{users}"
        );
        ensure!(trigger(&one, room, "marker-1", "x")? == 200);
        let next = read_json(&mut watcher)?;
        ensure!(
            next["event"] == "marker-1",
            "a second tab was announced: {next}"
        );
        // The first tab leaves: the user is still on node two.
        unsubscribe(&mut tab1, room)?;
        wait_for("node one counts the tab gone", || {
            Ok(channel_counts(&one, room)?["subscription_count"] == 2)
        })?;
        ensure!(trigger(&one, room, "marker-2", "x")? == 200);
        let next = read_json(&mut watcher)?;
        ensure!(
            next["event"] == "marker-2",
            "removed with a tab left: {next}"
        );
        // The last tab leaves, on the other node: now the user is gone.
        unsubscribe(&mut tab2, room)?;
        let removed = read_json(&mut watcher)?;
        ensure!(
            removed["event"] == "pusher_internal:member_removed",
            "{removed}"
        );
        let data: Value = serde_json::from_str(removed["data"].as_str().unwrap_or("{}"))?;
        ensure!(data["user_id"] == "u", "{removed}");
        wait_for("node two counts one user", || {
            Ok(channel_counts(&two, room)?["user_count"] == 1)
        })?;
        // A public channel's subscriptions on both nodes.
        let (mut p1, _) = established(&one)?;
        let (mut p2, _) = established(&two)?;
        for p in [&mut p1, &mut p2] {
            send_json(
                p,
                &json!({"event": "pusher:subscribe", "data": {"channel": "news"}}),
            )?;
            ensure!(read_json(p)?["event"] == "pusher_internal:subscription_succeeded");
        }
        for node in [&one, &two] {
            wait_for("both count both nodes' subscriptions", || {
                let counts = channel_counts(node, "news")?;
                Ok(counts["occupied"] == true && counts["subscription_count"] == 2)
            })?;
        }
        Ok(())
    })
}

pub(crate) fn a_killed_nodes_members_expire() -> Result<()> {
    each_broker("a_killed_nodes_members_expire", |_, url| {
        let (one, two) = two_nodes(url, &[])?;
        let room = "presence-ghosts";
        let (mut watcher, id_w) = established(&one)?;
        join_presence(&mut watcher, &id_w, room, "watcher")?;
        let (mut ghost, id_g) = established(&two)?;
        join_presence(&mut ghost, &id_g, room, "ghost")?;
        let added = read_json(&mut watcher)?;
        ensure!(added["event"] == "pusher_internal:member_added", "{added}");
        // SIGKILL: node two says nothing more.
        drop(two);
        let killed = Instant::now();
        // Within the read timeout (10 s): the expiry is 5 to 6 s.
        let removed = read_json(&mut watcher)?;
        ensure!(
            removed["event"] == "pusher_internal:member_removed",
            "{removed}"
        );
        ensure!(
            removed["data"].as_str().unwrap_or("").contains("ghost"),
            "{removed}"
        );
        let waited = killed.elapsed();
        // 5 to 6 s after its last beat, which was at most 1 s before the kill (a loaded
        // machine may stretch both ends a little).
        ensure!(
            waited >= Duration::from_secs(3) && waited <= Duration::from_secs(8),
            "dropped {waited:?} after the kill, not 5 to 6 s after its last beat"
        );
        let counts = channel_counts(&one, room)?;
        ensure!(
            counts["user_count"] == 1 && counts["subscription_count"] == 1,
            "{counts}"
        );
        drop(ghost);
        Ok(())
    })
}

/// A webhook receiver on 127.0.0.1: every event of every POST, with the node's port that
/// sent it unknown (both nodes share the URL).
struct Hooks {
    port: u16,
    events: std::sync::mpsc::Receiver<Value>,
}

impl Hooks {
    fn start() -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let Ok(n) = stream.read(&mut chunk) else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0usize);
                    if body.len() >= len {
                        break Some(body[..len].to_owned());
                    }
                };
                use std::io::Write as _;
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                if let Some(body) = body.and_then(|b| serde_json::from_str::<Value>(&b).ok()) {
                    for event in body["events"].as_array().into_iter().flatten() {
                        if tx.send(event.clone()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Self { port, events })
    }
}

pub(crate) fn occupied_vacated_and_members_fire_once_per_cluster() -> Result<()> {
    each_broker(
        "occupied_vacated_and_members_fire_once_per_cluster",
        |_, url| {
            let hooks = Hooks::start()?;
            let hook_url = format!("http://127.0.0.1:{}/hooks", hooks.port);
            let (one, two) = two_nodes(url, &["--app-secret", SECRET, "--app-webhook", &hook_url])?;
            let (mut c1, id1) = established(&one)?;
            let (mut c2, id2) = established(&two)?;
            // A channel on both nodes, and one user in both.
            for (client, id) in [(&mut c1, &id1), (&mut c2, &id2)] {
                send_json(
                    client,
                    &json!({"event": "pusher:subscribe", "data": {"channel": "hook-room"}}),
                )?;
                ensure!(read_json(client)?["event"] == "pusher_internal:subscription_succeeded");
                join_presence(client, id, "presence-hook", "w")?;
            }
            for node in [&one, &two] {
                wait_for("both nodes count both", || {
                    Ok(
                        channel_counts(node, "hook-room")?["subscription_count"] == 2
                            && channel_counts(node, "presence-hook")?["subscription_count"] == 2,
                    )
                })?;
            }
            for client in [&mut c1, &mut c2] {
                unsubscribe(client, "hook-room")?;
                unsubscribe(client, "presence-hook")?;
            }
            for node in [&one, &two] {
                wait_for("both nodes see both vacated", || {
                    Ok(channel_counts(node, "hook-room")?["occupied"] == false
                        && channel_counts(node, "presence-hook")?["occupied"] == false)
                })?;
            }
            // A client event on each node is sent by that node's webhook queue after whatever it
            // queued before: once both arrive, every node has sent what it will.
            for (client, id, name) in [
                (&mut c1, &id1, "client-done-1"),
                (&mut c2, &id2, "client-done-2"),
            ] {
                let mut ok = subscribe_private(client, id, "private-done", None)?;
                // Two nodes admitting the same user's first tabs at once may each announce
                // it (docs/PUSHER.md, "Not there yet"): such an event, still on its way when
                // the client left the channel, is not this answer.
                while ok["channel"] == "presence-hook" {
                    ok = read_json(client)?;
                }
                ensure!(
                    ok["event"] == "pusher_internal:subscription_succeeded",
                    "{ok}"
                );
                send_json(
                    client,
                    &json!({"event": name, "channel": "private-done", "data": {}}),
                )?;
            }
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut done = 0;
            while done < 2 {
                let left = deadline.saturating_duration_since(Instant::now());
                let event = hooks
                    .events
                    .recv_timeout(left)
                    .context("webhooks missing")?;
                if event["name"] == "client_event" {
                    done += 1;
                }
                seen.push(event);
            }
            let count = |name: &str, channel: &str| {
                seen.iter()
                    .filter(|e| e["name"] == name && e["channel"] == channel)
                    .count()
            };
            for (name, channel) in [
                ("channel_occupied", "hook-room"),
                ("channel_vacated", "hook-room"),
                ("channel_occupied", "presence-hook"),
                ("channel_vacated", "presence-hook"),
                ("member_added", "presence-hook"),
                ("member_removed", "presence-hook"),
            ] {
                ensure!(
                    count(name, channel) == 1,
                    "{name} on {channel} {} times: {seen:?}",
                    count(name, channel)
                );
            }
            Ok(())
        },
    )
}

/// With `--broker` and `--history`, positions are the broker's: an event triggered on one
/// node reaches the other's subscribers with its `offset` and `epoch`, `socket_id` exclusion
/// holds through the broker's log, and a subscriber that left node one resumes exactly on
/// node two from the last position it had.
pub(crate) fn a_resume_on_another_node_is_exact_through_the_redis_log() -> Result<()> {
    let Some(broker) = brokers::Broker::start(
        brokers::Kind::Redis,
        "a_resume_on_another_node_is_exact_through_the_redis_log",
    )?
    else {
        return Err(skip("redis-server missing (scripts/brokers.sh install)"));
    };
    let url = broker.url();
    let one = pusher_server(&["--broker", &url, "--history", "100"])?;
    let two = pusher_server(&["--broker", &url, "--history", "100"])?;
    let (mut a, id_a) = established(&one)?;
    let ok = subscribe_resuming(&mut a, "far", None)?;
    ensure!(
        ok["event"] == "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    // Node one holds the channel's topic (and the presence side channel's) at the broker.
    wait_for("node one subscribed at the broker", || {
        Ok(metric(&one, "uringcast_broker_subscribed_topics")? >= 2.0)
    })?;
    for n in 1..=3 {
        ensure!(trigger(&two, "far", "news", &n.to_string())? == 200);
    }
    let mut epoch = String::new();
    for n in 1..=3u64 {
        let (data, offset, e) = read_event(&mut a)?;
        ensure!((data.as_str(), offset) == (n.to_string().as_str(), n));
        if n == 1 {
            epoch = e;
        } else {
            ensure!(e == epoch, "one epoch for the stream: {e} then {epoch}");
        }
    }
    // Offset 4 skips a (its socket_id), offset 5 reaches it.
    ensure!(trigger_except(&two, "far", "news", "4", Some(&id_a))? == 200);
    ensure!(trigger(&two, "far", "news", "5")? == 200);
    let got = read_event(&mut a)?;
    ensure!(got == ("5".to_owned(), 5, epoch.clone()), "{got:?}");
    drop(a);
    for n in 6..=7 {
        ensure!(trigger(&one, "far", "news", &n.to_string())? == 200);
    }
    let (mut b, _) = established(&two)?;
    let ok = subscribe_resuming(&mut b, "far", Some(json!({"epoch": epoch, "offset": 5})))?;
    ensure!(
        ok["event"] == "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    for n in 6..=7u64 {
        ensure!(read_event(&mut b)? == (n.to_string(), n, epoch.clone()));
    }
    ensure!(trigger(&one, "far", "news", "8")? == 200);
    ensure!(read_event(&mut b)? == ("8".to_owned(), 8, epoch.clone()));
    Ok(())
}
