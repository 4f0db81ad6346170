#!/usr/bin/env bash
# Latency as deployments run: many idle connections, few talking. One imd node holds
# IDLE idle authenticated connections (one imbench run over SOURCES, which also raises
# the per-ip upgrade limit: start_imd passes --connect-rate 0), then a second imbench
# run sends verified chat at RATE msg/s over CONNECTIONS connections for DURATION.
# Prints imd's CPU with only the idle connections (over QUIET seconds, default one
# ping interval, so that every connection pings once in it; per 10,000
# connections) and the chat's latency, then stops everything it started (by PID).
# Then the same load against the bare floor, `imbench relay` (imd's client protocol,
# no store: FLOOR=0 skips it), and the ratios. Bounded: about twice
# (IDLE/RAMP + QUIET + DURATION + 60 s) after the build.
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

# imd's CPU time (utime + stime, in clock ticks).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# measure NAME PID URL: the idle connections, the quiet CPU sample, then the chat.
# Prints one line and leaves the figures in $WORK/NAME.chat.json and $WORK/NAME.cpu.
measure() {
    local name=$1 pid=$2 url=$3 fd0 idle_pid open c0 c1 cpu
    fd0=$(fds "$pid")
    timeout "$BUDGET" "$IMBENCH_BIN" run --target "$url" --token-secret "$SECRET" \
        --scenario idle --connections "$IDLE" --ramp "$RAMP" --duration "${HOLD}s" \
        --source-ips "$SOURCES" --local-agents 1 --report "$WORK/$name.idle.json" \
        >"$WORK/$name.idle.out" 2>"$WORK/$name.idle.err" &
    idle_pid=$!
    PIDS+=("$idle_pid")
    wait_connections "$pid" "$fd0" "$IDLE" "$idle_pid" $(( RAMP_S + 20 ))
    open=$(( $(fds "$pid") - fd0 ))
    [ "$open" -ge "$IDLE" ] || { echo "$name: only $open of $IDLE idle connections opened" >&2; exit 1; }
    c0=$(cpu_ticks "$pid")
    sleep "$QUIET"
    c1=$(cpu_ticks "$pid")
    cpu=$(awk -v d="$(( c1 - c0 ))" -v hz="$HZ" -v s="$QUIET" -v n="$open" \
        'BEGIN { printf "%.2f", 100*d/hz/s*10000/n }')
    echo "$cpu" >"$WORK/$name.cpu"
    timeout $(( DURATION + 60 )) "$IMBENCH_BIN" run --target "$url" --token-secret "$SECRET" \
        --scenario chat --connections "$CONNECTIONS" --rate "$RATE" --duration "${DURATION}s" \
        --verify --local-agents 1 --report "$WORK/$name.chat.json" \
        >"$WORK/$name.chat.out" 2>"$WORK/$name.chat.err" || rc=$?
    local j="$WORK/$name.chat.json"
    echo "$name: idle ${open}, ${cpu}% of a core per 10,000 connections; chat ${RATE} msg/s over ${CONNECTIONS} connections, ${DURATION}s: \
p50 $(json "$j" .latency_ms.p50) ms, p90 $(json "$j" .latency_ms.p90) ms, \
p99 $(json "$j" .latency_ms.p99) ms, p99.9 $(json "$j" .latency_ms.p999) ms, \
max $(json "$j" .latency_ms.max) ms; lost $(json "$j" .messages.lost), delivered $(json "$j" .messages.delivered)"
    if [ "$name" = imd ]; then
        # Where a send's time goes inside imd (buckets, since imd started).
        echo "  imd commits (durable, per batch): $(histogram "$url" imd_commit_latency_seconds 1000 ' ms')"
        echo "  imd batch sizes: $(histogram "$url" imd_commit_batch_size)"
        echo "  imd push queue → socket: $(histogram "$url" imd_push_latency_seconds 1000 ' ms')"
    fi
    kill -TERM "$idle_pid" 2>/dev/null || true
    wait "$idle_pid" 2>/dev/null || true
    forget_pid "$idle_pid"
}

rc=0
start_imd "$SECRET" "$BUDGET"
measure imd "$IMD_PID" "$IMD_URL"
kill -TERM "$IMD_PID" 2>/dev/null || true

if [ "${FLOOR:-1}" = 1 ]; then
    "$IMBENCH_BIN" relay --listen 127.0.0.1:0 --token-secret "$SECRET" >"$WORK/relay.out" 2>"$WORK/relay.err" &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    (sleep "$BUDGET"; kill -TERM "$RELAY_PID" 2>/dev/null) &
    PIDS+=("$!")
    for _ in $(seq 1 100); do
        RELAY_ADDR=$(grep -o '"listen":"[^"]*"' "$WORK/relay.out" 2>/dev/null | cut -d'"' -f4 || true)
        [ -n "$RELAY_ADDR" ] && break
        sleep 0.1
    done
    [ -n "$RELAY_ADDR" ] || { echo "imbench relay printed no listening line" >&2; exit 1; }
    measure floor "$RELAY_PID" "http://$RELAY_ADDR"
    awk -v a="$(json "$WORK/imd.chat.json" .latency_ms.p50)" -v b="$(json "$WORK/floor.chat.json" .latency_ms.p50)" \
        -v c="$(json "$WORK/imd.chat.json" .latency_ms.p99)" -v d="$(json "$WORK/floor.chat.json" .latency_ms.p99)" \
        -v e="$(cat "$WORK/imd.cpu")" -v f="$(cat "$WORK/floor.cpu")" \
        'BEGIN { printf "imd / floor: p50 %.1fx, p99 %.1fx; idle CPU per 10,000: imd %s%%, floor %s%% (the floor sends no pings)\n", a/b, c/d, e, f }'
fi
exit "$rc"
