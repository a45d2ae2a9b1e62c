//! What the broadcast tests share: an in-process server, clients, `/metrics` parsing.

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An in-process server, shut down on drop (after the test's clients, declared later, are
/// gone).
pub(crate) struct InProcess(Option<ServerHandle>);

impl InProcess {
    pub(crate) fn start<H: Handler>(workers: usize, handler: H) -> Result<Self> {
        let config = uringcast::server::Server::builder()
            .listen("127.0.0.1:0".parse()?)
            .workers(workers)
            .ping_interval(None)
            .drain_timeout(Duration::from_secs(1))
            .build()?;
        Ok(Self(Some(spawn_with(config, handler)?)))
    }
}

impl Deref for InProcess {
    type Target = ServerHandle;
    fn deref(&self) -> &ServerHandle {
        self.0.as_ref().expect("the handle is taken only on drop")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.shutdown();
        }
    }
}

/// A tokio-tungstenite connection to `ws://ADDR{path}`.
pub(crate) async fn ws_at(addr: SocketAddr, path: &str) -> Result<Ws> {
    let url = format!("ws://{addr}{path}");
    let (ws, response) = timeout(
        STEP,
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config()), true),
    )
    .await
    .with_context(|| format!("connecting to {url} timed out"))?
    .with_context(|| format!("connecting to {url}"))?;
    ensure!(response.status() == 101, "status {}", response.status());
    Ok(ws)
}

pub(crate) async fn send_text(ws: &mut Ws, text: &str) -> Result<()> {
    timeout(STEP, ws.send(WsMessage::text(text)))
        .await
        .context("sending timed out")?
        .context("sending")
}

/// The next message, skipping pings and pongs.
pub(crate) async fn next_ws(ws: &mut Ws) -> Result<WsMessage> {
    loop {
        match timeout(STEP, ws.next()).await {
            Err(_) => bail!("no message within {STEP:?}"),
            Ok(None) => bail!("the stream ended"),
            Ok(Some(message)) => match message.context("reading a message")? {
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                other => return Ok(other),
            },
        }
    }
}

pub(crate) async fn next_text(ws: &mut Ws) -> Result<String> {
    match next_ws(ws).await? {
        WsMessage::Text(text) => Ok(text.to_string()),
        other => bail!("expected a text message, got {other:?}"),
    }
}

/// `room:publisher:seq`.
pub(crate) fn parse_numbered(text: &str) -> Result<(&str, usize, u64)> {
    let mut parts = text.split(':');
    let (Some(room), Some(publisher), Some(seq), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("not room:publisher:seq: {text:?}");
    };
    Ok((room, publisher.parse()?, seq.parse()?))
}

/// `uringcast_subscriptions` per worker, from `/metrics`.
pub(crate) async fn subscriptions_by_worker(addr: SocketAddr) -> Result<Vec<f64>> {
    let metrics = fetch_metrics(addr).await?;
    metrics.per_worker("uringcast_subscriptions")
}

pub(crate) async fn fetch_metrics(addr: SocketAddr) -> Result<Exposition> {
    let reply = http(addr, "GET", "/metrics", &[], b"").await?;
    ensure!(reply.status == 200, "GET /metrics: {}", reply.head);
    parse_prometheus(std::str::from_utf8(&reply.body)?)
}

/// A whole HTTP response; the server closes after it.
pub(crate) struct HttpReply {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

impl HttpReply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 request on a new connection; reads until the server closes.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpReply> {
    let mut stream = timeout(STEP, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    if method == "POST" || !body.is_empty() {
        request += &format!("Content-Length: {}\r\n", body.len());
    }
    request += "\r\n";
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    timeout(STEP, stream.read_to_end(&mut raw))
        .await
        .with_context(|| format!("{method} {path}: no end of response within {STEP:?}"))?
        .with_context(|| format!("{method} {path}: reading the response"))?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: no response head in {raw:?}"))?
        + 4;
    let head = String::from_utf8(raw[..end].to_vec())?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    let reply = HttpReply {
        status,
        head,
        body: raw[end..].to_vec(),
    };
    if let Some(length) = reply.header("content-length") {
        ensure!(
            length.parse::<usize>()? == reply.body.len(),
            "Content-Length {length} but {} body bytes in {}",
            reply.body.len(),
            reply.head
        );
    }
    Ok(reply)
}

// ---------------------------------------------------------------------------------------------
// A validating parser of the Prometheus text format (version 0.0.4)
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

#[derive(Debug, Default)]
pub(crate) struct Exposition {
    pub(crate) types: HashMap<String, String>,
    pub(crate) samples: Vec<Sample>,
}

impl Exposition {
    /// The values of a `{worker="N"}` family, indexed by worker.
    pub(crate) fn per_worker(&self, name: &str) -> Result<Vec<f64>> {
        let mut values = Vec::new();
        for sample in self.samples.iter().filter(|s| s.name == name) {
            let worker: usize = sample
                .labels
                .iter()
                .find(|(l, _)| l == "worker")
                .ok_or_else(|| anyhow!("{name} sample without a worker label"))?
                .1
                .parse()?;
            if values.len() <= worker {
                values.resize(worker + 1, f64::NAN);
            }
            values[worker] = sample.value;
        }
        ensure!(
            !values.is_empty() && values.iter().all(|v| !v.is_nan()),
            "{name}: missing workers in {values:?}"
        );
        Ok(values)
    }

    pub(crate) fn sum(&self, name: &str) -> Result<f64> {
        Ok(self.per_worker(name)?.iter().sum())
    }
}

/// Parses and validates an exposition: `# HELP`/`# TYPE` lines, samples
/// `name{label="value",...} value [timestamp]` with numeric values, every sample's family
/// typed before its first sample, no duplicate series.
pub(crate) fn parse_prometheus(text: &str) -> Result<Exposition> {
    ensure!(
        text.is_empty() || text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    let mut out = Exposition::default();
    let mut helps = HashSet::new();
    let mut series = HashSet::new();
    for (number, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", number + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if let Some(rest) = rest.strip_prefix("HELP ") {
                let (name, _) = rest.split_once(' ').unwrap_or((rest, ""));
                ensure!(is_metric_name(name), "bad metric name in HELP, {}", at());
                ensure!(helps.insert(name.to_string()), "second HELP, {}", at());
            } else if let Some(rest) = rest.strip_prefix("TYPE ") {
                let mut words = rest.split(' ');
                let (Some(name), Some(kind), None) = (words.next(), words.next(), words.next())
                else {
                    bail!("TYPE needs a name and a type, {}", at());
                };
                ensure!(is_metric_name(name), "bad metric name in TYPE, {}", at());
                ensure!(
                    matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ),
                    "unknown type, {}",
                    at()
                );
                ensure!(
                    !out.samples
                        .iter()
                        .any(|s| family_of(&s.name, &out.types) == Some(name)),
                    "TYPE after the family's samples, {}",
                    at()
                );
                ensure!(
                    out.types.insert(name.into(), kind.into()).is_none(),
                    "second TYPE, {}",
                    at()
                );
            }
            continue; // other comments are allowed
        }
        let sample = parse_sample(line).with_context(at)?;
        let family = family_of(&sample.name, &out.types)
            .ok_or_else(|| anyhow!("sample of a family with no TYPE, {}", at()))?;
        if out.types[family] == "counter" {
            ensure!(sample.value >= 0.0, "negative counter, {}", at());
        }
        let mut key = sample.labels.clone();
        key.sort();
        ensure!(
            series.insert((sample.name.clone(), key)),
            "duplicate series, {}",
            at()
        );
        out.samples.push(sample);
    }
    Ok(out)
}

/// The typed family a sample belongs to: its own name, or for histograms and summaries the
/// name without `_bucket`, `_sum` or `_count`.
pub(crate) fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        matches!(
            types.get(base).map(String::as_str),
            Some("histogram" | "summary")
        )
        .then_some(base)
    })
}

pub(crate) fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

pub(crate) fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    ensure!(is_metric_name(name), "bad metric name {name:?}");
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let close = loop {
            // label name
            let start = match chars.peek() {
                Some(&(_, '}')) => break chars.next().expect("peeked").0,
                Some(&(i, _)) => i,
                None => bail!("unterminated label set"),
            };
            let eq = inner[start..]
                .find('=')
                .ok_or_else(|| anyhow!("label without '='"))?
                + start;
            let label = &inner[start..eq];
            ensure!(is_label_name(label), "bad label name {label:?}");
            ensure!(
                !labels.iter().any(|(l, _)| l == label),
                "label {label:?} twice"
            );
            while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                chars.next();
            }
            ensure!(
                chars.next().map(|(_, c)| c) == Some('"'),
                "label value must be quoted"
            );
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => bail!("unterminated label value"),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => bail!("bad escape {other:?} in a label value"),
                    },
                    Some((_, '\n')) => bail!("raw newline in a label value"),
                    Some((_, c)) => value.push(c),
                }
            }
            labels.push((label.to_string(), value));
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => break i,
                other => bail!("expected ',' or '}}' after a label, got {other:?}"),
            }
        };
        rest = &inner[close + 1..];
    }
    let mut words = rest.split_ascii_whitespace();
    ensure!(
        rest.starts_with(' '),
        "the value must follow the name or labels after a space"
    );
    let value = words.next().ok_or_else(|| anyhow!("no value"))?;
    let value = match value {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .ok()
            .filter(|_| {
                v.bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
            })
            .ok_or_else(|| anyhow!("value {v:?} is not a number"))?,
    };
    if let Some(timestamp) = words.next() {
        timestamp
            .parse::<i64>()
            .with_context(|| format!("timestamp {timestamp:?} is not an integer"))?;
    }
    ensure!(words.next().is_none(), "trailing text after the value");
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The validator must be able to fail: it rejects each way an exposition can be malformed.
#[test]
pub(crate) fn prometheus_validator_rejects_malformed_text() {
    let good =
        "# HELP a_total Things.\n# TYPE a_total counter\na_total{worker=\"0\",x=\"q\\\"\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\nb_total 1\n";
    // `b_total` has no TYPE: only the prefix without it is valid.
    let valid = &good[..good.find("b_total").unwrap()];
    let parsed = parse_prometheus(valid).expect("valid exposition");
    assert_eq!(parsed.samples.len(), 4);
    assert_eq!(parsed.samples[0].labels[1].1, "q\"");
    for bad in [
        good,                                            // sample with no TYPE
        "# TYPE a gauge\na 1",                           // no final newline
        "# TYPE a gauge\na one\n",                       // value not numeric
        "# TYPE a gauge\na{w=\"0\"}1\n",                 // no space before the value
        "# TYPE a gauge\na{w=0} 1\n",                    // unquoted label value
        "# TYPE a gauge\na{w=\"0\" 1\n",                 // unterminated labels
        "# TYPE a gauge\na{0w=\"0\"} 1\n",               // bad label name
        "# TYPE a gauge\na{w=\"0\",w=\"1\"} 1\n",        // label twice
        "# TYPE a gauge\na 1\na 2\n",                    // duplicate series
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",         // second TYPE
        "# TYPE a gauges\na 1\n",                        // unknown type
        "# TYPE a counter\na -1\n",                      // negative counter
        "# TYPE a gauge\na 1 x\n",                       // timestamp not an integer
        "# TYPE a gauge\na 1\n# TYPE a gauge\n",         // TYPE after samples
        "# HELP 1a x\n",                                 // bad name in HELP
        "# TYPE a gauge\n# HELP a x\n# HELP a y\na 1\n", // second HELP
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}
