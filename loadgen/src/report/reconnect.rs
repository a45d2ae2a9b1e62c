//! The report's reconnect figures (`--reconnect`, `sse --reconnect-after`) and the `sse`
//! streams' position checks, as JSON and text.

use serde_json::{json, Value};

use crate::scenario::sse::StreamTally;
use crate::scenario::traffic::ReconnectTally;

/// `reconnect` in a JSON report: `null` when nothing reconnected and `--reconnect` was off.
pub fn json(r: &ReconnectTally) -> Value {
    if !r.enabled && r.asked == 0 {
        return Value::Null;
    }
    json!({
        "enabled": r.enabled,
        "lost": r.lost,
        "asked": r.asked,
        "reconnected": r.reconnected,
        "attempts": r.attempts,
        "failed_attempts": r.failed_attempts,
        "gave_up": r.gave_up,
        "peak_handshakes_per_s": r.peak_per_second(),
        "back_after_s": r.back_after_s(),
        "peak_reconnect_handshakes_per_s": r.peak_per_second_since_loss(),
    })
}

/// The text line, if there is anything to say.
pub fn text(r: &ReconnectTally) -> Option<String> {
    (r.enabled || r.asked > 0).then(|| {
        format!(
            "reconnect lost {} (+{} closed on purpose): reconnected {}, attempts {} ({} failed), \
             gave up {}; peak {} handshakes/s{}",
            r.lost,
            r.asked,
            r.reconnected,
            r.attempts,
            r.failed_attempts,
            r.gave_up,
            r.peak_per_second(),
            r.back_after_s()
                .map(|s| format!("; all back {s:.2} s after the first loss"))
                .unwrap_or_default()
        )
    })
}

/// `streams` in an `sse` report.
pub fn streams_json(s: &StreamTally) -> Value {
    json!({
        "events": s.events,
        "positions": s.positions,
        "without_id": s.without_id,
        "bad_ids": s.bad_ids,
        "resets": s.resets,
        "gaps": s.gaps,
        "gap_events": s.gap_events,
        "repeated": s.repeated,
        "resumes": s.resumes,
        "recovered": s.recovered,
        "reset_on_resume": s.reset_on_resume,
        "silent_losses": s.silent_losses,
        "repeated_on_resume": s.repeated_on_resume,
        "unconfirmed": s.unconfirmed,
        "storm": storm_json(s),
    })
}

/// `streams.storm` in an `sse` report: `null` without `--reconnect-window`.
fn storm_json(s: &StreamTally) -> Value {
    if s.storm_streams == 0 {
        return Value::Null;
    }
    json!({
        "streams": s.storm_streams,
        "live_again": s.storm_live,
        "replayed": s.storm_replayed,
        "reopen_spread_s": s.storm_reopen_spread_s(),
        "all_live_after_s": s.storm_all_live_after_s(),
    })
}

/// The `sse` text lines.
pub fn streams_text(s: &StreamTally) -> String {
    let mut text = streams_counts_text(s);
    if s.storm_streams > 0 {
        text.push_str(&format!(
            "storm     {} streams reopened over {:.2} s: {} live again ({} replayed \
             publications first); {}\n",
            s.storm_streams,
            s.storm_reopen_spread_s().unwrap_or(0.0),
            s.storm_live,
            s.storm_replayed,
            match s.storm_all_live_after_s() {
                Some(after) => format!("the last live {after:.3} s after the first reopen"),
                None => "not all live again before the end".to_owned(),
            }
        ));
    }
    text
}

fn streams_counts_text(s: &StreamTally) -> String {
    format!(
        "events    {} with data, {} position-only, {} without id, {} bad ids; resets {}; gaps {} \
         ({} events skipped); repeated {}\n\
         resumes   {}: recovered exactly {}, reset {}, silent loss {}, repeated {}, unconfirmed {}\n",
        s.events,
        s.positions,
        s.without_id,
        s.bad_ids,
        s.resets,
        s.gaps,
        s.gap_events,
        s.repeated,
        s.resumes,
        s.recovered,
        s.reset_on_resume,
        s.silent_losses,
        s.repeated_on_resume,
        s.unconfirmed
    )
}
