#!/usr/bin/env bash
# Streams across nodes (issue 25; docs/PERFORMANCE.md, "Streams across nodes"): the parts of
# scripts/bench_brokers.sh that put --history beside plain pub/sub for Redis, Redis Cluster,
# NATS (JetStream) and Kafka (Tansu), and the recovery of 1,000 SSE streams on a fresh node.
# See bench_brokers.sh for what each part measures and its environment (BROKERS,
# CEILING_RATES, OUT, PORT_BASE, SUBSCRIBERS); scripts/bench_streams_summary.py turns this
# script's output into the medians of the tables.
# Usage: scripts/bench_streams.sh [RUNS=3] [WHAT=history-fanout,history-latency,history-ceiling,recovery]
set -euo pipefail
exec "$(dirname "$0")/bench_brokers.sh" "${1:-3}" "${2:-streams}"
