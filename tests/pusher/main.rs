//! Integration tests of `--mode pusher`: the binary on `127.0.0.1:0`, driven by raw
//! WebSocket and HTTP clients here, and by the real clients (pusher-js and the `pusher` Node
//! SDK in Node, the Python `pusher` SDK) that `scripts/pusher_clients.sh` installs into
//! `target/pusher-clients/`. Without node or those packages (or without a test's broker),
//! those tests show as ignored, with the reason: this is a `libtest-mimic` harness
//! (`harness = false` in Cargo.toml), and a test that returns a [`Skip`] error is ignored.
//!
//! Every wait is a read or a child-process wait bounded by a timeout; nothing sleeps.

#[path = "../brokers/support.rs"]
#[allow(dead_code)]
mod brokers;
mod clients;
mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod logs;
mod protocol;

#[path = "../common/skip.rs"]
mod skip;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::*;
use serde_json::{json, Value};
use skip::{skip, trial};
use uringcast::protocol::OpCode;
use uringcast::pusher::auth::sign;

const APP_ID: &str = "42";
const KEY: &str = "test-key";
const SECRET: &str = "test-secret";

fn pusher_server(extra: &[&str]) -> Result<Server> {
    let mut args = vec![
        "--mode",
        "pusher",
        "--workers",
        "2",
        "--app-id",
        APP_ID,
        "--app-key",
        KEY,
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args, |cmd| {
        cmd.env("URINGCAST_APP_SECRET", SECRET);
    })
}

/// A raw WebSocket client on `path`.
fn connect(server: &Server, path: &str) -> Result<RawClient> {
    let addr = server.addr();
    let mut client = RawClient::connect(addr)?;
    let request =
        upgrade_request(addr, SAMPLE_KEY).replacen("GET /chat ", &format!("GET {path} "), 1);
    client.send(request.as_bytes())?;
    let head = client.read_http_head()?;
    ensure!(head.status == 101, "expected 101, got:\n{}", head.raw);
    Ok(client)
}

fn read_json(client: &mut RawClient) -> Result<Value> {
    let (_, payload) = client.read_message()?;
    serde_json::from_slice(&payload).context("a message that is not JSON")
}

fn send_json(client: &mut RawClient, value: &Value) -> Result<()> {
    client.send(&client_frame(
        OpCode::Text,
        true,
        value.to_string().as_bytes(),
    ))
}

/// Connects as a Pusher client and returns it with its socket id.
fn established(server: &Server) -> Result<(RawClient, String)> {
    let mut client = connect(
        server,
        &format!("/app/{KEY}?protocol=7&client=js&version=8.4.0"),
    )?;
    let message = read_json(&mut client)?;
    ensure!(
        message["event"] == "pusher:connection_established",
        "{message}"
    );
    let data: Value = serde_json::from_str(message["data"].as_str().unwrap_or_default())?;
    let socket_id = data["socket_id"].as_str().unwrap_or_default().to_owned();
    ensure!(
        socket_id.split_once('.').is_some_and(|(a, b)| !a.is_empty()
            && !b.is_empty()
            && (a.to_owned() + b).bytes().all(|c| c.is_ascii_digit())),
        "socket_id {socket_id:?}"
    );
    ensure!(data["activity_timeout"] == 120, "{data}");
    Ok((client, socket_id))
}

fn subscribe_private(
    client: &mut RawClient,
    socket_id: &str,
    channel: &str,
    data: Option<&str>,
) -> Result<Value> {
    let to_sign = match data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    let auth = format!("{KEY}:{}", sign(SECRET, &to_sign));
    let mut body = json!({"channel": channel, "auth": auth});
    if let Some(data) = data {
        body["channel_data"] = data.into();
    }
    send_json(client, &json!({"event": "pusher:subscribe", "data": body}))?;
    read_json(client)
}

/// Subscribes to a public channel, with `resume` in the data when given; returns the
/// `subscription_succeeded`.
fn subscribe_resuming(
    client: &mut RawClient,
    channel: &str,
    resume: Option<Value>,
) -> Result<Value> {
    let mut data = json!({"channel": channel});
    if let Some(resume) = resume {
        data["resume"] = resume;
    }
    send_json(client, &json!({"event": "pusher:subscribe", "data": data}))?;
    let ok = read_json(client)?;
    ensure!(
        ok["event"] == "pusher_internal:subscription_succeeded" && ok["channel"] == channel,
        "{ok}"
    );
    Ok(ok)
}

/// Reads one channel event and returns its `data` and its position.
fn read_event(client: &mut RawClient) -> Result<(String, u64, String)> {
    let event = read_json(client)?;
    ensure!(event["event"] == "news", "{event}");
    let offset = event["offset"].as_u64().context("no offset")?;
    let epoch = event["epoch"].as_str().context("no epoch")?.to_owned();
    Ok((
        event["data"].as_str().unwrap_or_default().to_owned(),
        offset,
        epoch,
    ))
}

/// A metric's value from `GET /metrics` (summed over its label sets), or 0 when absent.
fn metric(server: &Server, name: &str) -> Result<f64> {
    let mut client = RawClient::connect(server.addr())?;
    client.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let (body, _) = client.read_to_end()?;
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// `POST /apps/{id}/events`, signed as the SDKs sign it; returns the status.
fn trigger(server: &Server, channel: &str, event: &str, data: &str) -> Result<u16> {
    trigger_except(server, channel, event, data, None)
}

/// [`trigger`], excluding a `socket_id`.
fn trigger_except(
    server: &Server,
    channel: &str,
    event: &str,
    data: &str,
    socket_id: Option<&str>,
) -> Result<u16> {
    let mut body = json!({"name": event, "channel": channel, "data": data});
    if let Some(id) = socket_id {
        body["socket_id"] = id.into();
    }
    signed_post(server, &format!("/apps/{APP_ID}/events"), &body.to_string())
}

/// A POST to the API, signed as the SDKs sign it; returns the status.
fn signed_post(server: &Server, path: &str, body: &str) -> Result<u16> {
    use uringcast::pusher::signing::{md5_hex, parse_query, string_to_sign};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let query = format!(
        "auth_key={KEY}&auth_timestamp={now}&auth_version=1.0&body_md5={}",
        md5_hex(body.as_bytes())
    );
    let signature = sign(SECRET, &string_to_sign("POST", path, &parse_query(&query)?));
    let mut client = RawClient::connect(server.addr())?;
    client.send(
        format!(
            "POST {path}?{query}&auth_signature={signature} HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )?;
    Ok(client.read_http_head()?.status)
}

/// Polls `check` on `what` until it holds (an API answer or a metric: no event says when
/// another node's message has been merged), at most 20 s.
fn wait_for(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check()? {
        ensure!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The trials `module::test`, each named as libtest named it.
macro_rules! trials {
    ($($module:ident::$test:ident),* $(,)?) => {
        vec![$(trial(concat!(stringify!($module), "::", stringify!($test)), $module::$test)),*]
    };
}

fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let trials = trials![
        protocol::an_unknown_key_closes_with_4001,
        protocol::old_missing_and_bad_protocols_close_with_their_codes,
        protocol::ping_pong_and_socket_ids_differ,
        protocol::private_auth_is_checked_and_client_events_are_rate_limited,
        protocol::client_events_skip_their_sender_with_history_on,
        protocol::a_resumed_subscription_gets_exactly_the_missed_events_first,
        protocol::without_history_a_resume_fails_and_events_carry_no_position,
        protocol::a_presence_channel_does_not_resume,
        protocol::a_silent_connection_is_pinged_then_closed_with_4201,
        protocol::two_apps_never_share_a_channel,
        protocol::an_app_over_its_connection_quota_closes_with_4004,
        protocol::every_subscription_limit_answers_with_its_status,
        protocol::a_bad_signature_is_refused_before_the_body,
        protocol::missing_app_settings_exit_2_with_one_line,
        clients::pusher_js_public_channels,
        clients::pusher_js_private_channels_and_client_events,
        clients::pusher_js_presence_counts_users_not_tabs,
        clients::pusher_js_cache_channels,
        clients::pusher_js_signin_user_events_and_terminate,
        clients::pusher_node_sdk_batches_and_signing,
        clients::laravel_echo_private_presence_and_whispers,
        clients::pusher_js_in_headless_chromium,
        clients::the_resume_module_recovers_pusher_js_in_headless_chromium,
        clients::webhooks_are_signed_retried_and_valid_for_the_node_sdk,
        clients::python_sdk_http_api,
        cluster::events_and_exclusions_cross_nodes_on_redis,
        cluster::presence_and_channel_counts_are_the_clusters,
        cluster::a_killed_nodes_members_expire,
        cluster::occupied_vacated_and_members_fire_once_per_cluster,
        cluster::a_resume_on_another_node_is_exact_through_the_redis_log,
        logs::socket_id_exclusion_holds_through_jetstream,
        logs::socket_id_exclusion_holds_through_kafka,
        logs::a_resume_on_another_node_is_exact_through_the_kafka_log,
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
