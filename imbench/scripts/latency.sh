#!/usr/bin/env bash
# End-to-end message latency of one imd node: verified chat at RATE msg/s over
# CONNECTIONS connections for DURATION, intended send time → push on the recipient.
#
# Builds release binaries, starts imd on a temp data dir, runs imbench, prints
# p50/p90/p99/p99.9 and the loss check, then stops imd (by PID). Bounded: about
# DURATION + 40 s after the build. Exits non-zero when a message was lost.
#
#   imbench/scripts/latency.sh                       # 2000 msg/s, 200 connections, 20 s
#   RATE=5000 DURATION=30s imbench/scripts/latency.sh
source "$(dirname "$0")/lib.sh"

RATE=${RATE:-2000}
CONNECTIONS=${CONNECTIONS:-200}
DURATION=${DURATION:-20s}
AGENTS=${AGENTS:-1}
SECRET="latency-$$"
BUDGET=$(( ${DURATION%s} + 60 ))

[ "${SKIP_BUILD:-0}" = 1 ] || build
start_imd "$SECRET" "$BUDGET"

rc=0
timeout "$BUDGET" "$IMBENCH_BIN" run --target "$IMD_URL" --token-secret "$SECRET" \
    --scenario chat --connections "$CONNECTIONS" --rate "$RATE" --duration "$DURATION" \
    --verify --local-agents "$AGENTS" --report "$WORK/chat.json" || rc=$?

echo
echo "chat ${RATE} msg/s, ${CONNECTIONS} connections, ${DURATION}: \
p50 $(json "$WORK/chat.json" .latency_ms.p50) ms, \
p90 $(json "$WORK/chat.json" .latency_ms.p90) ms, \
p99 $(json "$WORK/chat.json" .latency_ms.p99) ms, \
p99.9 $(json "$WORK/chat.json" .latency_ms.p999) ms, \
max $(json "$WORK/chat.json" .latency_ms.max) ms; \
lost $(json "$WORK/chat.json" .messages.lost), delivered $(json "$WORK/chat.json" .messages.delivered)"
exit "$rc"
