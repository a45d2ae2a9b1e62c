//! The real clients against one node: pusher-js and laravel-echo in Node and in headless
//! Chromium, the Node SDK, webhooks checked by the Node SDK, and the Python SDK.

use super::*;

// ---------------------------------------------------------------------------------------------
// Real clients
// ---------------------------------------------------------------------------------------------

/// Where scripts/pusher_clients.sh installed the clients.
fn clients_dir() -> PathBuf {
    std::env::var_os("PUSHER_CLIENTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pusher-clients"),
        PathBuf::from,
    )
}

/// The reason to skip (see [`Skip`]), when node or the npm packages are missing.
fn node_missing() -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Some("node is not installed".into());
    }
    let modules = clients_dir().join("node_modules");
    for package in ["pusher-js", "pusher"] {
        if !modules.join(package).is_dir() {
            return Some(format!(
                "{package} is not in {} (run scripts/pusher_clients.sh)",
                modules.display()
            ));
        }
    }
    None
}

/// Runs a client script against `server` and checks that it printed `ok NAME`.
fn run_client(server: &Server, program: &str, args: &[&str], expect: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .env("NODE_PATH", clients_dir().join("node_modules"))
        .env("PUSHER_HOST", "127.0.0.1")
        .env("PUSHER_PORT", server.addr().port().to_string())
        .env("PUSHER_APP_ID", APP_ID)
        .env("PUSHER_KEY", KEY)
        .env("PUSHER_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {program} {args:?}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{program} {args:?} did not finish in 60 s");
        }
        // A child-process wait with an upper bound: std has no timed wait.
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .map(|mut s| s.read_to_string(&mut stdout));
    ensure!(
        status.success(),
        "{program} {args:?} failed ({status}):\n{stdout}"
    );
    ensure!(
        stdout.lines().any(|l| l == expect),
        "no {expect:?} in:\n{stdout}"
    );
    Ok(())
}

fn pusher_js(scenario: &str) -> Result<()> {
    if let Some(reason) = node_missing() {
        return Err(skip(reason));
    }
    let server = pusher_server(&[])?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pusher/js/clients.js");
    run_client(
        &server,
        "node",
        &[script, scenario],
        &format!("ok {scenario}"),
    )
}

pub(crate) fn pusher_js_public_channels() -> Result<()> {
    pusher_js("public")
}

pub(crate) fn pusher_js_private_channels_and_client_events() -> Result<()> {
    pusher_js("private")
}

pub(crate) fn pusher_js_presence_counts_users_not_tabs() -> Result<()> {
    pusher_js("presence")
}

pub(crate) fn pusher_js_cache_channels() -> Result<()> {
    pusher_js("cache")
}

pub(crate) fn pusher_js_signin_user_events_and_terminate() -> Result<()> {
    pusher_js("signin")
}

pub(crate) fn pusher_node_sdk_batches_and_signing() -> Result<()> {
    pusher_js("batch")
}

pub(crate) fn laravel_echo_private_presence_and_whispers() -> Result<()> {
    if let Some(reason) = node_missing() {
        return Err(skip(reason));
    }
    if !clients_dir().join("node_modules/laravel-echo").is_dir() {
        return Err(skip(
            "laravel-echo is not installed (run scripts/pusher_clients.sh)",
        ));
    }
    let server = pusher_server(&[])?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pusher/js/echo.js");
    run_client(&server, "node", &[script], "ok echo")
}

pub(crate) fn pusher_js_in_headless_chromium() -> Result<()> {
    if let Some(reason) = node_missing() {
        return Err(skip(reason));
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let found = Command::new(&chromium)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !found.is_ok_and(|s| s.success()) {
        return Err(skip(format!("no {chromium} (set CHROMIUM)")));
    }
    let server = pusher_server(&[])?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pusher/js/chromium.js");
    run_client(&server, "node", &[script], "ok chromium")
}

pub(crate) fn the_resume_module_recovers_pusher_js_in_headless_chromium() -> Result<()> {
    if let Some(reason) = node_missing() {
        return Err(skip(reason));
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let found = Command::new(&chromium)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !found.is_ok_and(|s| s.success()) {
        return Err(skip(format!("no {chromium} (set CHROMIUM)")));
    }
    let server = pusher_server(&["--history", "100"])?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pusher/js/resume.js");
    run_client(&server, "node", &[script], "ok resume")
}

pub(crate) fn webhooks_are_signed_retried_and_valid_for_the_node_sdk() -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    if let Some(reason) = node_missing() {
        return Err(skip(reason));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pusher/js/webhooks.js");
    let mut receiver = Command::new("node")
        .arg(script)
        .env("NODE_PATH", clients_dir().join("node_modules"))
        .env("PUSHER_APP_ID", APP_ID)
        .env("PUSHER_KEY", KEY)
        .env("PUSHER_SECRET", SECRET)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdin = receiver.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(receiver.stdout.take().context("stdout")?).lines();
    let first = lines.next().context("the receiver printed nothing")??;
    let port = first
        .strip_prefix("webhook-port ")
        .with_context(|| format!("unexpected first line {first:?}"))?;
    let url = format!("http://127.0.0.1:{port}/pusher/webhooks");
    let server = pusher_server(&["--app-secret", SECRET, "--app-webhook", &url])?;
    writeln!(stdin, "{}", server.addr().port())?;
    // The receiver's own timer bounds this read: it exits within 60 s either way.
    let verdict = lines
        .next()
        .context("the receiver ended without a verdict")??;
    let status = receiver.wait()?;
    ensure!(
        status.success() && verdict == "ok webhooks",
        "{verdict} ({status})"
    );
    let mut client = RawClient::connect(server.addr())?;
    client.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let (body, _) = client.read_to_end()?;
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    ensure!(
        value("uringcast_pusher_webhooks_sent_total") >= 4.0,
        "{text}"
    );
    ensure!(
        value("uringcast_pusher_webhooks_retried_total") >= 1.0,
        "{text}"
    );
    ensure!(
        value("uringcast_pusher_webhooks_failed_total") == 0.0,
        "{text}"
    );
    Ok(())
}

pub(crate) fn python_sdk_http_api() -> Result<()> {
    let python = clients_dir().join("venv/bin/python");
    if !python.is_file() {
        return Err(skip(format!(
            "no {} (run scripts/pusher_clients.sh)",
            python.display()
        )));
    }
    let server = pusher_server(&[])?;
    let (mut client, socket_id) = established(&server)?;
    let member = r#"{"user_id":"py-user","user_info":{"lang":"python"}}"#;
    let ok = subscribe_private(&mut client, &socket_id, "presence-py", Some(member))?;
    ensure!(
        ok["event"] == "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    let user_data = r#"{"id":"py-user"}"#;
    let auth = format!(
        "{KEY}:{}",
        sign(SECRET, &format!("{socket_id}::user::{user_data}"))
    );
    send_json(
        &mut client,
        &json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}),
    )?;
    ensure!(read_json(&mut client)?["event"] == "pusher:signin_success");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pusher/py/api.py");
    run_client(
        &server,
        python.to_str().unwrap_or_default(),
        &[script],
        "ok api",
    )?;
    // What Python published arrived, in order, and terminate closed the connection with 4009.
    let mut events = Vec::new();
    for _ in 0..3 {
        let message = read_json(&mut client)?;
        events.push((message["event"].clone(), message["data"].clone()));
    }
    ensure!(
        events
            == vec![
                (json!("from-python"), json!(r#"{"n": 1}"#)),
                (json!("batch-1"), json!("one")),
                (json!("batch-2"), json!("two")),
            ],
        "{events:?}"
    );
    ensure!(client.expect_close()?.close_code() == Some(4009));
    Ok(())
}
