#!/usr/bin/env bash
# A server kill -9 during a verified chat run: does anything get lost, and how long do
# deliveries stop?
#
# Builds release binaries, starts imd on a temp data dir (rate limits off), runs a
# verified chat (RATE msg/s over CONNECTIONS connections for DURATION s), and
# KILL_AFTER s into the traffic kill -9s imd and restarts it at once on the SAME port
# and data dir. imbench's clients reconnect (full jitter: 100 ms window doubling to 2 s), resend
# their unacknowledged messages with the same cid and sync their inboxes. Prints lost
# (must be 0), duplicated, the longest delivery gap (the longest time no device
# received any push) and imd's restart time, then stops everything it started (by
# PID). Exits non-zero when a message was lost. Bounded: about DURATION + DRAIN + 60 s
# after the build.
#
# The kill and the restart are marked on the chart's time axis (imbench --mark-file);
# with REPORT=FILE.json the report and its chart (FILE.html: deliveries, p99, open
# connections and errors per second around the kill) are kept, else they go with the
# temp dir.
#
#   imbench/scripts/kill-during-chat.sh
#   RATE=2000 CONNECTIONS=200 DURATION=30 KILL_AFTER=10 imbench/scripts/kill-during-chat.sh
#   REPORT=/tmp/kill.json imbench/scripts/kill-during-chat.sh
#
# Recovery of a big data dir (issue 17): DATA=DIR runs imd on DIR instead of a temp
# dir (fill one with `cargo run --release -p imd --example fill_store -- DIR 10`);
# COLD=1 also drops the kernel's page cache between the kill and the restart (root),
# as after a machine crash rather than a process crash; READY_WAIT=s is how long the
# restart may take (default 10).
#
#   DATA=/var/tmp/imd-10g READY_WAIT=300 imbench/scripts/kill-during-chat.sh
#   DATA=/var/tmp/imd-10g READY_WAIT=300 COLD=1 imbench/scripts/kill-during-chat.sh
source "$(dirname "$0")/lib.sh"

RATE=${RATE:-1000}
CONNECTIONS=${CONNECTIONS:-100}
DURATION=${DURATION:-30}
KILL_AFTER=${KILL_AFTER:-10}
DRAIN=${DRAIN:-10}
SECRET="kill-during-chat-$$"
BUDGET=$(( DURATION + DRAIN + 60 + ${READY_WAIT:-10} ))
MARKS="$WORK/marks"
: >"$MARKS"

[ "${SKIP_BUILD:-0}" = 1 ] || build
start_imd "$SECRET" "$BUDGET" 127.0.0.1:0 "${DATA:-$WORK/data}"
PORT=${IMD_URL##*:}

timeout "$BUDGET" "$IMBENCH_BIN" run --target "$IMD_URL" --token-secret "$SECRET" \
    --scenario chat --connections "$CONNECTIONS" --rate "$RATE" --duration "${DURATION}s" \
    --drain "${DRAIN}s" --verify --local-agents 1 --report "$WORK/kill.json" \
    --mark-file "$MARKS" >"$WORK/bench.out" 2>"$WORK/bench.err" &
BENCH_PID=$!
PIDS+=("$BENCH_PID")

# Traffic starts about 0.5 s (start) + the ramp (1000 conn/s) + 1 s (settle) in.
START_S=$(( 2 + CONNECTIONS / 1000 ))
sleep $(( START_S + KILL_AFTER ))
kill -0 "$BENCH_PID" 2>/dev/null || { cat "$WORK/bench.err" >&2; echo "imbench ended early" >&2; exit 1; }
OLD_PID=$IMD_PID
KILLED_AT=$(date +%s%3N)
kill -KILL "$OLD_PID"
echo "$KILLED_AT kill -9 imd" >>"$MARKS"
wait "$OLD_PID" 2>/dev/null || true
kill "$IMD_WATCHDOG" 2>/dev/null || true
wait "$IMD_WATCHDOG" 2>/dev/null || true
forget_pid "$OLD_PID"
forget_pid "$IMD_WATCHDOG"
if [ "${COLD:-0}" = 1 ]; then
    sync
    echo 3 >/proc/sys/vm/drop_caches || { echo "COLD=1: cannot drop the page cache (root?)" >&2; exit 1; }
    echo "== page cache dropped" >&2
fi
echo "== killed imd $OLD_PID (kill -9); restarting on 127.0.0.1:$PORT, same data dir" >&2
STARTED_AT=$(date +%s%3N)
start_imd "$SECRET" "$BUDGET" "127.0.0.1:$PORT" "${DATA:-$WORK/data}"
READY_AT=$(date +%s%3N)
echo "$READY_AT imd ready again" >>"$MARKS"
[ "$IMD_URL" = "http://127.0.0.1:$PORT" ] || { echo "imd came back on $IMD_URL" >&2; exit 1; }

finish_kill_run \
    "kill -9 of imd ${KILL_AFTER}s into a verified chat at ${RATE} msg/s, ${CONNECTIONS} connections, ${DURATION}s:" \
    "  imd restart: ready $(( READY_AT - KILLED_AT )) ms after the kill, $(( READY_AT - STARTED_AT )) ms after it was started again (data dir $(du -sh "${DATA:-$WORK/data}" | cut -f1), page cache $([ "${COLD:-0}" = 1 ] && echo dropped || echo warm))"
