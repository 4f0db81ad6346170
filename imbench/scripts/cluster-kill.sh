#!/usr/bin/env bash
# A worker kill -9 during a verified chat run across a cluster: is anything lost, and
# how long are deliveries held up?
#
# Starts redis-server (AOF fsync always), one gateway (gateway,dispatcher) and two
# workers, and runs verified chat with `imbench --spread` (the two ends of every pair
# on different workers). KILL_AFTER s into the traffic it kill -9s worker w2 and does
# NOT restart it: w2's clients reconnect to w1 (imbench moves to the next target),
# resend their unacknowledged messages with the same cid and sync their inboxes, while
# w1's clients keep sending to users whose worker is gone (those messages wait in the
# inboxes). Prints lost (must be 0), duplicated, reconnects, the longest time no device
# received anything, and when w2 left the registry. Exits non-zero when a message was
# lost. SIGNAL=TERM stops w2 gracefully instead (its clients are kicked with
# `shutdown`, it sends what it owes, says goodbye to w1 and deregisters); the report
# ends with w1's catch-up counters, which show whether w1 had to look for lost pushes.
# Bounded: about DURATION + DRAIN + 60 s after the build.
#
#   imbench/scripts/cluster-kill.sh
#   RATE=2000 CONNECTIONS=200 DURATION=30 KILL_AFTER=10 imbench/scripts/cluster-kill.sh
#   SIGNAL=TERM imbench/scripts/cluster-kill.sh
source "$(dirname "$0")/lib.sh"

RATE=${RATE:-1000}
CONNECTIONS=${CONNECTIONS:-200}
DURATION=${DURATION:-30}
KILL_AFTER=${KILL_AFTER:-10}
DRAIN=${DRAIN:-10}
SIGNAL=${SIGNAL:-KILL}
SECRET="cluster-kill-$$"
ADMIN="cluster-kill-admin-$$"
BUDGET=$(( DURATION + DRAIN + 60 ))

[ "${SKIP_BUILD:-0}" = 1 ] || build
start_test_cluster "$SECRET" "$ADMIN" "$BUDGET"

timeout "$BUDGET" "$IMBENCH_BIN" run --target "$W1_URL" --target "$W2_URL" --spread \
    --token-secret "$SECRET" --scenario chat --connections "$CONNECTIONS" --rate "$RATE" \
    --duration "${DURATION}s" --drain "${DRAIN}s" --verify --local-agents 1 \
    --report "$WORK/kill.json" >"$WORK/bench.out" 2>"$WORK/bench.err" &
BENCH_PID=$!
PIDS+=("$BENCH_PID")

# Traffic starts about 0.5 s (start) + the ramp (1000 conn/s) + 1 s (settle) in.
sleep $(( 2 + CONNECTIONS / 1000 + KILL_AFTER ))
kill -0 "$BENCH_PID" 2>/dev/null || { cat "$WORK/bench.err" >&2; echo "imbench ended early" >&2; exit 1; }
KILLED_AT=$(date +%s%3N)
kill -"$SIGNAL" "$W2_PID"
echo "== sent SIG$SIGNAL to worker w2 ($W2_PID); not restarting it" >&2
for _ in $(seq 1 200); do
    [ "$(cluster_nodes "$GW_URL" "$ADMIN" registered)" = "gw1 w1" ] && break
    sleep 0.05
done
GONE_AT=$(date +%s%3N)
wait "$W2_PID" 2>/dev/null || true
forget_pid "$W2_PID"
# A counter of w1's, every cause label summed; 0 when it never moved.
counter() { curl -s "$W1_URL/metrics" | awk -v m="$1" '$1 ~ "^"m"({|$)" {s += $2} END {print s + 0}'; }
catch_ups() {
    echo "  w1 catch-up: $(counter imd_catch_up_requests_total) asked," \
        "$(counter imd_catch_up_skipped_total) skipped (goodbye), $(counter imd_catch_up_passes_total) passes"
}

finish_kill_run \
    "SIG$SIGNAL of worker w2 ${KILL_AFTER}s into a verified chat across 2 workers at ${RATE} msg/s, ${CONNECTIONS} connections, ${DURATION}s:" \
    "  w2 out of the registry $(( GONE_AT - KILLED_AT )) ms after the signal" \
    catch_ups
