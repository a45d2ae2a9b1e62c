//! The summary: text on stdout, JSON for `--json`, and the verdict.

use super::*;

pub(crate) struct Report<'a> {
    pub(crate) config: &'a Config,
    pub(crate) good: &'a Good,
    pub(crate) hostile: &'a Hostile,
    pub(crate) samples: &'a [Sample],
    pub(crate) metrics: BTreeMap<String, u64>,
    pub(crate) rss_at_publish_end: Option<u64>,
    pub(crate) after_secs: f64,
    pub(crate) hostile_secs: f64,
    pub(crate) hostile_aborted: usize,
    pub(crate) drain_secs: f64,
}

pub(crate) fn report(r: Report<'_>) -> Summary {
    let published = r.good.published();
    let (mut received, mut missing, mut out_of_order, mut corrupt) = (0, 0, 0, 0);
    for checker in r.good.checkers.lock().expect("checkers lock").iter() {
        let c = checker.lock().expect("checker lock");
        received += c.received;
        missing += c.missing(&published);
        out_of_order += c.out_of_order;
        corrupt += c.corrupt;
    }
    let expected: u64 = {
        let main: u64 = published[..SHAPE.ws_publishers + SHAPE.http_publishers]
            .iter()
            .sum();
        let echo: u64 = published[SHAPE.ws_publishers + SHAPE.http_publishers..]
            .iter()
            .sum();
        main * (SHAPE.subscribers + SHAPE.ws_publishers) as u64 + echo
    };
    let unexpected_closes = r.good.unexpected_closes.load(Ordering::Relaxed);
    let http_errors = r.good.http_errors.load(Ordering::Relaxed);
    let pass = missing == 0
        && out_of_order == 0
        && corrupt == 0
        && unexpected_closes == 0
        && http_errors == 0
        && expected > 0;

    let of = |phase: Phase| r.samples.iter().filter(move |s| s.phase == phase);
    let baseline = of(Phase::Baseline).map(|s| s.rss_kb).max();
    let good_only = of(Phase::Good).map(|s| s.rss_kb).max();
    let peak_hostile = of(Phase::Hostile).map(|s| s.rss_kb).max();
    let after_last = of(Phase::After).next_back().map(|s| s.rss_kb);
    let after = r.rss_at_publish_end.or(after_last);
    let peak = r.samples.iter().map(|s| s.rss_kb).max();
    let fmt_kb = |v: Option<u64>| {
        v.map_or("n/a".to_owned(), |kb| {
            format!("{:.1} MiB", kb as f64 / 1024.0)
        })
    };
    let json_kb = |v: Option<u64>| v.map_or("null".to_owned(), |kb| kb.to_string());
    let reasons = r.good.reasons.lock().expect("reasons lock").clone();
    let counts = r.hostile.counts.lock().expect("hostile lock").clone();

    let mut text = String::new();
    let _ = writeln!(
        text,
        "soak: {} for {:.0} s of traffic (server pid {})",
        r.config.addr,
        r.config.total.as_secs_f64(),
        r.config.pid
    );
    let _ = writeln!(
        text,
        "good: {} subscribers, {} ws publishers, {} http publishers, {} echo clients",
        SHAPE.subscribers, SHAPE.ws_publishers, SHAPE.http_publishers, SHAPE.echo
    );
    let _ = writeln!(
        text,
        "good: published {} (ws {}, http {}, echo {}), expected deliveries {expected}, received {received}",
        published.iter().sum::<u64>(),
        published[..SHAPE.ws_publishers].iter().sum::<u64>(),
        published[SHAPE.ws_publishers..SHAPE.ws_publishers + SHAPE.http_publishers].iter().sum::<u64>(),
        published[SHAPE.ws_publishers + SHAPE.http_publishers..].iter().sum::<u64>(),
    );
    let _ = writeln!(
        text,
        "good: missing {missing}, out of order {out_of_order}, corrupt {corrupt}, unexpected closes {unexpected_closes}, http errors {http_errors} (drain {:.1} s)",
        r.drain_secs
    );
    for reason in &reasons {
        let _ = writeln!(text, "good:   {reason}");
    }
    let _ = writeln!(
        text,
        "hostile: {:.1} s, {} task(s) still running at the end and aborted",
        r.hostile_secs, r.hostile_aborted
    );
    for (kind, whats) in &counts {
        let list: Vec<String> = whats.iter().map(|(w, n)| format!("{w} {n}")).collect();
        let _ = writeln!(text, "hostile: {kind}: {}", list.join(", "));
    }
    let _ = writeln!(
        text,
        "rss: baseline {}, good clients only {}, peak with hostile clients {}, {:.0} s after they left {}, peak overall {}",
        fmt_kb(baseline),
        fmt_kb(good_only),
        fmt_kb(peak_hostile),
        r.after_secs,
        fmt_kb(after),
        fmt_kb(peak)
    );
    let pick = [
        "slow_consumer_closes_total",
        "drops_total",
        "mailbox_drops_total",
        "connections_accepted_total",
        "publishes_total",
    ];
    let shown: Vec<String> = pick
        .iter()
        .filter_map(|name| r.metrics.get(*name).map(|v| format!("{name} {v}")))
        .collect();
    let _ = writeln!(
        text,
        "server metrics: {}",
        if shown.is_empty() {
            "unavailable".to_owned()
        } else {
            shown.join(", ")
        }
    );
    let _ = writeln!(text, "result: {}", if pass { "PASS" } else { "FAIL" });

    let mut json = String::new();
    let _ = writeln!(json, "{{\n  \"pass\": {pass},\n  \"addr\": \"{}\",\n  \"server_pid\": {},\n  \"traffic_secs\": {},", r.config.addr, r.config.pid, r.config.total.as_secs_f64());
    let _ = writeln!(json, "  \"good\": {{\"subscribers\": {}, \"ws_publishers\": {}, \"http_publishers\": {}, \"echo_clients\": {}, \"published\": {}, \"published_ws\": {}, \"published_http\": {}, \"published_echo\": {}, \"expected_deliveries\": {expected}, \"received\": {received}, \"missing\": {missing}, \"out_of_order\": {out_of_order}, \"corrupt\": {corrupt}, \"unexpected_closes\": {unexpected_closes}, \"http_errors\": {http_errors}, \"drain_secs\": {:.3}, \"reasons\": [{}]}},",
        SHAPE.subscribers,
        SHAPE.ws_publishers,
        SHAPE.http_publishers,
        SHAPE.echo,
        published.iter().sum::<u64>(),
        published[..SHAPE.ws_publishers].iter().sum::<u64>(),
        published[SHAPE.ws_publishers..SHAPE.ws_publishers + SHAPE.http_publishers].iter().sum::<u64>(),
        published[SHAPE.ws_publishers + SHAPE.http_publishers..].iter().sum::<u64>(),
        r.drain_secs,
        reasons.iter().map(|s| json_string(s)).collect::<Vec<_>>().join(", ")
    );
    let hostile_json: Vec<String> = counts
        .iter()
        .map(|(kind, whats)| {
            let inner: Vec<String> = whats
                .iter()
                .map(|(w, n)| format!("{}: {n}", json_string(w)))
                .collect();
            format!("{}: {{{}}}", json_string(kind), inner.join(", "))
        })
        .collect();
    let _ = writeln!(
        json,
        "  \"hostile\": {{\"secs\": {:.3}, \"aborted_tasks\": {}, \"counts\": {{{}}}}},",
        r.hostile_secs,
        r.hostile_aborted,
        hostile_json.join(", ")
    );
    let _ = writeln!(json, "  \"rss_kb\": {{\"baseline\": {}, \"good_only_peak\": {}, \"hostile_peak\": {}, \"after_hostile\": {}, \"after_hostile_secs\": {:.1}, \"peak\": {}}},",
        json_kb(baseline),
        json_kb(good_only),
        json_kb(peak_hostile),
        json_kb(after),
        r.after_secs,
        json_kb(peak)
    );
    let timeline: Vec<String> = r
        .samples
        .iter()
        .map(|s| format!("[{:.1}, \"{}\", {}]", s.t, s.phase.name(), s.rss_kb))
        .collect();
    let _ = writeln!(json, "  \"rss_samples\": [{}],", timeline.join(", "));
    let metrics: Vec<String> = r
        .metrics
        .iter()
        .map(|(k, v)| format!("{}: {v}", json_string(k)))
        .collect();
    let _ = writeln!(json, "  \"server_metrics\": {{{}}}\n}}", metrics.join(", "));
    Summary { text, json, pass }
}

pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn messages_check_themselves() {
        for (p, seq) in [(0, 0), (3, 1), (7, 12345), (100, 54)] {
            let m = build_message(p, seq);
            assert_eq!(parse_message(m.as_bytes()), Some((p, seq)));
            let mut bad = m.clone().into_bytes();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert_eq!(parse_message(&bad), None);
            assert_eq!(parse_message(&m.as_bytes()[..m.len() - 1]), None);
        }
    }

    #[test]
    pub(crate) fn checker_counts_gaps_and_reorders() {
        let mut c = Checker::new(vec![0, 1]);
        for seq in [0, 1, 3, 2, 4] {
            c.check(build_message(0, seq).as_bytes());
        }
        c.check(build_message(1, 0).as_bytes());
        c.check(build_message(9, 0).as_bytes());
        assert_eq!(c.out_of_order, 2);
        assert_eq!(c.corrupt, 1);
        // 0..5 from publisher 0 seen (2 late, so 1 counted skipped), 1 of 2 from publisher 1.
        assert_eq!(c.missing(&[5, 2]), 2);
    }
}
