//! Faults: a broker that is not there at start, one that dies and comes back mid-run, and
//! nodes that join and leave while traffic flows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;

/// Unreachable at start: one line and exit 2; with `--broker-optional` the node starts
/// local-only and delivers locally.
pub(crate) async fn an_unreachable_broker_stops_the_start_unless_optional() -> Result<()> {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    for url in [
        format!("redis://127.0.0.1:{port}"),
        format!("redis+cluster://127.0.0.1:{port}"),
        format!("nats://127.0.0.1:{port}"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_uringcast"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--mode",
                "broadcast",
                "--broker",
                &url,
            ])
            .env("RUST_LOG", "off")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2),
            "{url}: {:?} {stderr}",
            out.status
        );
        ensure!(
            stderr.lines().count() == 1 && stderr.contains(&url),
            "{url}: not one line naming the broker: {stderr}"
        );
        let optional =
            Server::start(&["--mode", "broadcast", "--broker", &url, "--broker-optional"])?;
        let mut a = ws(optional.addr(), "/room").await?;
        let mut b = ws(optional.addr(), "/room").await?;
        send(&mut a, "local").await?;
        ensure!(next_text(&mut b).await? == "local");
        ensure!(metric(optional.addr(), "uringcast_broker_connected").await? == 0);
    }
    Ok(())
}

/// The broker killed mid-run: local delivery never stops, publishes meanwhile are counted as
/// failed at the publisher and as a gap at the receiver, and once the broker is back (empty)
/// the links resubscribe by themselves and cross-node delivery resumes.
pub(crate) async fn a_lost_broker_stops_only_cross_node_delivery_and_the_loss_is_counted(
    kind: Kind,
) -> Result<()> {
    with_broker(kind, "broker_restart", |mut broker| async move {
        let a = node(&broker, &[])?;
        let b = node(&broker, &[])?;
        let mut publisher = ws(a.addr(), "/room").await?;
        let mut on_a = ws(a.addr(), "/room").await?;
        let mut on_b = ws(b.addr(), "/room").await?;
        wait_subscribed(a.addr(), 1).await?;
        wait_subscribed(b.addr(), 1).await?;
        send(&mut publisher, "before").await?;
        ensure!(next_text(&mut on_a).await? == "before");
        ensure!(next_text(&mut on_b).await? == "before");

        broker.kill();
        // Publishes go on until the publisher's link has noticed the loss (a NATS client
        // may take several before it does, more on a loaded machine: those are lost after
        // the hand-over, and only the receivers' gap count sees them); at least 5, at most
        // 500, 10 ms apart once the first 5 are out.
        let mut during = 0u64;
        loop {
            let text = format!("during:{during}");
            send(&mut publisher, &text).await?;
            ensure!(
                next_text(&mut on_a).await? == text,
                "local delivery stopped"
            );
            during += 1;
            if during >= 5
                && (metric(a.addr(), "uringcast_broker_publish_failures_total").await? >= 1
                    || during >= 500)
            {
                break;
            }
            if during >= 5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Every publish is accounted for at the publisher: handed to the broker or failed.
        wait_metrics(
            a.addr(),
            &[
                "uringcast_broker_published_total",
                "uringcast_broker_publish_failures_total",
            ],
            |v| v[0] + v[1] == 1 + during && v[1] >= 1,
        )
        .await?;

        broker.restart()?;
        // Probe until one crosses: the links reconnect with backoff (at most 5 s apart).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut probe = 0;
        // A NATS client may hold a publish it took before it noticed the loss and send it
        // after reconnecting: such `during:N` messages arrive first, in order, once each.
        let mut late_during: Vec<u64> = Vec::new();
        let first = 'probing: loop {
            ensure!(
                Instant::now() < deadline,
                "cross-node delivery did not resume"
            );
            probe += 1;
            send(&mut publisher, &format!("after:{probe}")).await?;
            ensure!(next_text(&mut on_a).await? == format!("after:{probe}"));
            while let Ok(text) = timeout(Duration::from_millis(200), next_text(&mut on_b)).await {
                let text = text?;
                match text.strip_prefix("during:") {
                    Some(n) => late_during.push(n.parse()?),
                    None => break 'probing text,
                }
            }
        };
        ensure!(first.starts_with("after:"), "B received {first:?}");
        ensure!(
            late_during.windows(2).all(|w| w[0] < w[1]),
            "B received {late_during:?}"
        );
        // B saw A's sequence jump over what never reached it.
        let gaps = metric(b.addr(), "uringcast_broker_gaps_total").await?;
        let failed = metric(a.addr(), "uringcast_broker_publish_failures_total").await?;
        let lost_probes: u64 = first["after:".len()..].parse::<u64>()? - 1;
        let lost_during = during - late_during.len() as u64;
        ensure!(
            gaps == lost_during + lost_probes && failed >= 1,
            "B counted {gaps} missing, A {failed} failed; {lost_probes} probes before the \
             first, {late_during:?} arrived late"
        );
        ensure!(metric(b.addr(), "uringcast_broker_connected").await? == 1);
        Ok(())
    })
    .await
}

/// A third node joins while a publisher sends, receives from then on, and leaves: its
/// subscriber gets 1001, the broker loses its subscription (Redis counts it), and the other
/// nodes go on.
pub(crate) async fn nodes_join_and_leave_while_traffic_flows(kind: Kind) -> Result<()> {
    with_broker(kind, "join_leave", |broker| async move {
        let a = node(&broker, &[])?;
        let b = node(&broker, &[])?;
        let mut publisher = ws(a.addr(), "/room").await?;
        let mut on_b = ws(b.addr(), "/room").await?;
        wait_subscribed(b.addr(), 1).await?;
        let baseline = broker.channel_subscribers("room")?;

        // A publisher on A sends m:0, m:1, ... every 2 ms until told to stop, then "end".
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let traffic = tokio::spawn(async move {
            let mut sent = 0u64;
            while !flag.load(Ordering::Acquire) {
                send(&mut publisher, &format!("m:{sent}")).await?;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            send(&mut publisher, "end").await?;
            anyhow::Ok((sent, publisher))
        });

        // C joins mid-stream: from its first message on, it gets every one, in order.
        let mut c = node(&broker, &["--drain-timeout", "1"])?;
        let mut on_c = ws(c.addr(), "/room").await?;
        wait_subscribed(c.addr(), 1).await?;
        if let Some(before) = baseline {
            ensure!(broker.channel_subscribers("room")? == Some(before + 1));
        }
        let number = |text: String| -> Result<u64> {
            Ok(text
                .strip_prefix("m:")
                .ok_or_else(|| anyhow!("{text:?}"))?
                .parse()?)
        };
        let first = number(next_text(&mut on_c).await?)?;
        for k in 1..50 {
            ensure!(
                number(next_text(&mut on_c).await?)? == first + k,
                "C skipped one"
            );
        }
        // C's last subscriber leaves while C runs: C unsubscribes at the broker.
        timeout(STEP, on_c.close(None)).await??;
        wait_subscribed(c.addr(), 0).await?;
        if let Some(before) = baseline {
            ensure!(
                broker.channel_subscribers("room")? == Some(before),
                "C stayed subscribed after its last subscriber left"
            );
        }
        // C leaves altogether, with a subscriber: it says 1001 and exits clean.
        let mut on_c = ws(c.addr(), "/room").await?;
        wait_subscribed(c.addr(), 1).await?;
        c.sigterm()?;
        loop {
            match next(&mut on_c).await? {
                WsMessage::Close(Some(frame)) => {
                    ensure!(u16::from(frame.code) == 1001);
                    break;
                }
                WsMessage::Text(_) => continue, // traffic still flowing
                other => bail!("C's subscriber got {other:?}, expected close 1001"),
            }
        }
        ensure!(c.wait_exit(STEP)?.success(), "C did not exit cleanly");
        if let Some(before) = baseline {
            ensure!(
                broker.channel_subscribers("room")? == Some(before),
                "C's subscription outlived it"
            );
        }
        // B, there all along, got every message in order through both changes.
        stop.store(true, Ordering::Release);
        let (sent, _publisher) = traffic.await??;
        for i in 0..sent {
            ensure!(
                next_text(&mut on_b).await? == format!("m:{i}"),
                "B at m:{i}"
            );
        }
        ensure!(next_text(&mut on_b).await? == "end");
        Ok(())
    })
    .await
}
