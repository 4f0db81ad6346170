#!/usr/bin/env bash
# Latency as deployments run: many idle connections, few talking. One imd node holds
# IDLE idle authenticated connections (one imbench run over SOURCES, which also raises
# the per-ip upgrade limit: start_imd passes --connect-rate 0), then a second imbench
# run sends verified chat at RATE msg/s over CONNECTIONS connections for DURATION.
# Prints imd's CPU with only the idle connections (over QUIET seconds, default one
# ping interval, so that every connection pings once in it; per 10,000
# connections) and the chat's latency, then stops everything it started (by PID).
# Bounded: about IDLE/RAMP + QUIET + DURATION + 60 s after the build.
#
#   imbench/scripts/idle-plus-chat.sh                     # 15000 idle, 1000 msg/s
#   RATE=5000 CONNECTIONS=400 imbench/scripts/idle-plus-chat.sh
#   IDLE=200 imbench/scripts/idle-plus-chat.sh            # the floor without idle load
source "$(dirname "$0")/lib.sh"

IDLE=${IDLE:-15000}
RAMP=${RAMP:-5000}
RATE=${RATE:-1000}
CONNECTIONS=${CONNECTIONS:-200}
DURATION=${DURATION:-10}
QUIET=${QUIET:-20}
SOURCES=${SOURCES:-127.0.0.2-127.0.0.17}
SECRET="idle-plus-chat-$$"
RAMP_S=$(( (IDLE + RAMP - 1) / RAMP ))
HOLD=$(( QUIET + DURATION + 40 ))
BUDGET=$(( RAMP_S + HOLD + 60 ))

[ "${SKIP_BUILD:-0}" = 1 ] || build
start_imd "$SECRET" "$BUDGET"
FD0=$(fds "$IMD_PID")

timeout "$BUDGET" "$IMBENCH_BIN" run --target "$IMD_URL" --token-secret "$SECRET" \
    --scenario idle --connections "$IDLE" --ramp "$RAMP" --duration "${HOLD}s" \
    --source-ips "$SOURCES" --local-agents 1 --report "$WORK/idle.json" \
    >"$WORK/idle.out" 2>"$WORK/idle.err" &
IDLE_PID=$!
PIDS+=("$IDLE_PID")

deadline=$(( SECONDS + RAMP_S + 20 ))
while [ $(( $(fds "$IMD_PID") - FD0 )) -lt "$IDLE" ] && [ $SECONDS -lt $deadline ]; do
    kill -0 "$IDLE_PID" 2>/dev/null || break
    sleep 0.5
done
OPEN=$(( $(fds "$IMD_PID") - FD0 ))
[ "$OPEN" -ge "$IDLE" ] || { echo "only $OPEN of $IDLE idle connections opened" >&2; exit 1; }
sleep 2 # the last handshakes settle

# imd's CPU time (utime + stime, in clock ticks) while only the idle connections live.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
C0=$(cpu_ticks "$IMD_PID")
sleep "$QUIET"
C1=$(cpu_ticks "$IMD_PID")
IDLE_CPU=$(awk -v d="$(( C1 - C0 ))" -v hz="$HZ" -v s="$QUIET" -v n="$OPEN" \
    'BEGIN { printf "%.2f%% of a core (%.2f%% per 10,000 connections)", 100*d/hz/s, 100*d/hz/s*10000/n }')
echo "== imd with $OPEN idle connections: $IDLE_CPU" >&2

rc=0
timeout $(( DURATION + 60 )) "$IMBENCH_BIN" run --target "$IMD_URL" --token-secret "$SECRET" \
    --scenario chat --connections "$CONNECTIONS" --rate "$RATE" --duration "${DURATION}s" \
    --verify --local-agents 1 --report "$WORK/chat.json" >"$WORK/chat.out" 2>"$WORK/chat.err" || rc=$?

echo "idle ${OPEN}: imd ${IDLE_CPU}; chat ${RATE} msg/s over ${CONNECTIONS} connections, ${DURATION}s: \
p50 $(json "$WORK/chat.json" .latency_ms.p50) ms, \
p90 $(json "$WORK/chat.json" .latency_ms.p90) ms, \
p99 $(json "$WORK/chat.json" .latency_ms.p99) ms, \
p99.9 $(json "$WORK/chat.json" .latency_ms.p999) ms, \
max $(json "$WORK/chat.json" .latency_ms.max) ms; \
lost $(json "$WORK/chat.json" .messages.lost), delivered $(json "$WORK/chat.json" .messages.delivered)"
exit "$rc"
