#!/usr/bin/env bash
# The webhook under load, against `imbench webhook-sink` (signatures and per-conversation
# order checked on every event):
#
#  1. floor: verified chat at RATE msg/s for DURATION with no webhook;
#  2. webhook on: the same chat, every committed message POSTed to the sink; the added
#     p99 send → push, and the sink's throughput and commit → accepted lag;
#  3. receiver down: the sink answers 500 for FAIL_FOR from its first event while the
#     same chat runs, then recovers: nothing lost, no seq skipped in any conversation,
#     time to drain the backlog.
#
# Each phase uses a fresh imd (embedded store). Bounded: about 3 × DURATION + FAIL_FOR
# + 3 min. Exits non-zero when a message was lost or an event missing or out of order.
#
#   imbench/scripts/webhook.sh                      # 2000 msg/s, 20 s, down for 60 s
#   RATE=1000 DURATION=10s FAIL_FOR=20s imbench/scripts/webhook.sh
source "$(dirname "$0")/lib.sh"

RATE=${RATE:-2000}
CONNECTIONS=${CONNECTIONS:-200}
DURATION=${DURATION:-20s}
FAIL_FOR=${FAIL_FOR:-60s}
SECRET="webhook-$$"
HOOK_SECRET="whsec-$$"
BUDGET=$(( ${DURATION%s} + ${FAIL_FOR%s} + 120 ))

[ "${SKIP_BUILD:-0}" = 1 ] || build

# start_sink [FLAGS…]: starts the sink, sets SINK_PID, SINK_URL and SINK_OUT.
start_sink() {
    SINK_OUT="$WORK/sink.$RANDOM.out"
    "$IMBENCH_BIN" webhook-sink --secret "$HOOK_SECRET" --duration "${BUDGET}s" "$@" \
        >"$SINK_OUT" 2>>"$WORK/sink.err" &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    local listen=""
    for _ in $(seq 1 100); do
        listen=$(grep -o '"listen":"[^"]*"' "$SINK_OUT" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
        [ -n "$listen" ] && break
        sleep 0.1
    done
    [ -n "$listen" ] || { cat "$WORK/sink.err" >&2; echo "the sink did not start" >&2; exit 1; }
    SINK_URL="http://$listen/imd"
}

# chat NAME: the verified chat against $IMD_URL, report in $WORK/NAME.json.
chat() {
    timeout "$BUDGET" "$IMBENCH_BIN" run --target "$IMD_URL" --token-secret "$SECRET" \
        --scenario chat --connections "$CONNECTIONS" --rate "$RATE" --duration "$DURATION" \
        --verify --report "$WORK/$1.json" >&2
}

# wait_sink N MAX_SECONDS: waits until the sink accepted N distinct events, then stops
# it (SIGTERM prints its summary) and leaves the summary in $WORK/sink.json.
wait_sink() {
    local n=$1 deadline=$(( SECONDS + $2 )) got=0
    while [ $SECONDS -lt $deadline ]; do
        got=$(grep -o '"unique":[0-9]*' "$SINK_OUT" | tail -1 | cut -d: -f2 || true)
        [ "${got:-0}" -ge "$n" ] && break
        sleep 0.5
    done
    kill -TERM "$SINK_PID" 2>/dev/null || true
    wait "$SINK_PID" || SINK_RC=$?
    forget_pid "$SINK_PID"
    grep '"event":"summary"' "$SINK_OUT" > "$WORK/sink.json" || { tail -5 "$SINK_OUT" "$WORK/sink.err" >&2; exit 1; }
}

stop_imd() {
    if ! kill -TERM "$IMD_PID" 2>/dev/null; then
        echo "imd exited before the end of the phase:" >&2
        tail -20 "$WORK/imd.err" >&2
        rc=1
    fi
    wait "$IMD_PID" 2>/dev/null || true
    forget_pid "$IMD_PID"
    kill "$IMD_WATCHDOG" 2>/dev/null || true
}

p99() { json "$WORK/$1.json" .latency_ms.p99; }
rc=0
SINK_RC=0

echo "== 1. floor: no webhook" >&2
start_imd "$SECRET" "$BUDGET" 127.0.0.1:0 "$WORK/data1"
chat floor || rc=$?
stop_imd

echo "== 2. webhook on" >&2
start_sink
IMD_ARGS=(--webhook-url "$SINK_URL" --webhook-secret "$HOOK_SECRET")
start_imd "$SECRET" "$BUDGET" 127.0.0.1:0 "$WORK/data2"
chat hooked || rc=$?
sent=$(json "$WORK/hooked.json" .messages.sent)
wait_sink "$sent" 120
on_unique=$(json "$WORK/sink.json" .unique)
on_rate=$(json "$WORK/sink.json" .peak_per_s)
on_lag=$(json "$WORK/sink.json" .lag_ms.p99)
on_gaps=$(json "$WORK/sink.json" .gaps)
stop_imd
[ "$SINK_RC" = 0 ] && [ "$on_unique" -ge "$sent" ] || rc=1

echo "== 3. receiver answers 500 for $FAIL_FOR, then recovers" >&2
SINK_RC=0
start_sink --fail-for "$FAIL_FOR"
IMD_ARGS=(--webhook-url "$SINK_URL" --webhook-secret "$HOOK_SECRET")
start_imd "$SECRET" "$BUDGET" 127.0.0.1:0 "$WORK/data3"
chat down || rc=$?
sent3=$(json "$WORK/down.json" .messages.sent)
wait_sink "$sent3" $(( ${FAIL_FOR%s} + 120 ))
stop_imd
[ "$SINK_RC" = 0 ] && [ "$(json "$WORK/sink.json" .unique)" -ge "$sent3" ] || rc=1

echo
echo "floor (no webhook): chat ${RATE} msg/s ${DURATION}: p99 $(p99 floor) ms, lost $(json "$WORK/floor.json" .messages.lost)"
echo "webhook on: p99 $(p99 hooked) ms, lost $(json "$WORK/hooked.json" .messages.lost); sink: $on_unique of $sent events, peak $on_rate events/s, commit→accepted p99 $on_lag ms, gaps $on_gaps"
echo "receiver down ${FAIL_FOR}: p99 $(p99 down) ms, lost $(json "$WORK/down.json" .messages.lost); sink: $(json "$WORK/sink.json" .unique) of $sent3 events, answered 500 $(json "$WORK/sink.json" .answered_500) times, gaps $(json "$WORK/sink.json" .gaps), repeats $(json "$WORK/sink.json" .repeats), backlog drained $(json "$WORK/sink.json" .drain_ms) ms after recovery at $(json "$WORK/sink.json" .backlog_per_s) events/s"
exit "$rc"
