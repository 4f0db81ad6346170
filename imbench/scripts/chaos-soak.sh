#!/usr/bin/env bash
# A soak with connection churn: does imd leak memory or sockets when connections come
# and go all the time for half an hour, and is anything lost on the way?
#
# Builds release binaries, starts one imd node (embedded store, rate limits off,
# --retention RETENTION) on a temp data dir, opens IDLE idle connections over SOURCES,
# then runs a verified chat at
# RATE msg/s over CONNECTIONS connections for DURATION seconds. Every connection, idle
# and chatting, closes itself LIFETIME after it opened and opens again at once
# (imbench --lifetime; the first closes are spread over one lifetime, so about
# (IDLE + CONNECTIONS) / LIFETIME connections close and reopen every second, evenly);
# a chat connection then resends what was not acknowledged and syncs, and goes on
# being verified. Every SAMPLE seconds the script writes imd's VmRSS, its open file
# descriptors and the size of its data file to a file (`unix_s rss_kib fds file_kib`;
# SAMPLES=FILE keeps it), and every MARK_EVERY seconds marks them on the chat's chart
# (imbench --mark-file). At the end it prints the chat's outcome (lost must be 0), the
# churn, imd's RSS, fds and data file at the start, middle and end of the load, and
# their slopes (least squares, per minute) over the whole load and over its second
# half (after the warm-up).
#
# Read the RSS next to the file: redb keeps the pages it touches in its cache (up to
# --store-cache-bytes, 64 MiB by default), so imd's RSS follows the data file until
# the cache is full; under --retention the file stops growing once messages and their
# idempotency keys (kept no longer than the retention) leave as fast as they come.
# Churn alone (RATE=1: a nearly silent chat) must leave RSS flat. Exits non-zero when a
# message was lost, when imd died, or when its fds at the end exceed those at the start
# by more than FD_SLACK (sockets leak); the RSS slope is printed, not judged. Stops
# everything it started (by PID). Bounded: about DURATION + IDLE/RAMP + 120 s after
# the build.
#
#   imbench/scripts/chaos-soak.sh                            # 30 min, 500 msg/s, 3000 idle
#   SKIP_BUILD=1 DURATION=120 imbench/scripts/chaos-soak.sh  # a 2-minute try
#   RATE=1 DURATION=900 imbench/scripts/chaos-soak.sh         # churn alone, 15 min
#   RATE=1000 IDLE=5000 LIFETIME=30s SAMPLES=/tmp/soak.tsv REPORT=/tmp/soak.json \
#       imbench/scripts/chaos-soak.sh
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-1800}
RATE=${RATE:-500}
CONNECTIONS=${CONNECTIONS:-200}
IDLE=${IDLE:-3000}
RAMP=${RAMP:-2000}
LIFETIME=${LIFETIME:-60s}
RETENTION=${RETENTION:-1m}
SAMPLE=${SAMPLE:-10}
MARK_EVERY=${MARK_EVERY:-300}
FD_SLACK=${FD_SLACK:-50}
DRAIN=${DRAIN:-10}
SOURCES=${SOURCES:-127.0.0.2-127.0.0.5}
SECRET="chaos-soak-$$"
RAMP_S=$(( (IDLE + RAMP - 1) / RAMP ))
BUDGET=$(( DURATION + RAMP_S + DRAIN + 120 ))
MARKS="$WORK/marks"
SAMPLES_FILE="$WORK/samples.tsv"
: >"$MARKS"
: >"$SAMPLES_FILE"

[ "${SKIP_BUILD:-0}" = 1 ] || build
[ "$RETENTION" = off ] || IMD_ARGS=(--retention "$RETENTION")
start_imd "$SECRET" "$BUDGET"
IMD_ARGS=()
FD0=$(fds "$IMD_PID")
echo "== imd (one node, embedded store, retention $RETENTION): VmRSS $(rss_kb "$IMD_PID") KiB, $FD0 fds before any connection" >&2

# The idle connections outlive the chat: they ramp first and stop after it.
timeout "$BUDGET" "$IMBENCH_BIN" run --target "$IMD_URL" --token-secret "$SECRET" \
    --scenario idle --connections "$IDLE" --ramp "$RAMP" \
    --duration "$(( DURATION + 20 ))s" --lifetime "$LIFETIME" --source-ips "$SOURCES" \
    --local-agents 1 --report "$WORK/idle.json" >"$WORK/idle.out" 2>"$WORK/idle.err" &
IDLE_PID=$!
PIDS+=("$IDLE_PID")
wait_connections "$IMD_PID" "$FD0" "$IDLE" "$IDLE_PID" $(( RAMP_S + 20 ))

timeout "$BUDGET" "$IMBENCH_BIN" run --target "$IMD_URL" --token-secret "$SECRET" \
    --scenario chat --connections "$CONNECTIONS" --rate "$RATE" --duration "${DURATION}s" \
    --drain "${DRAIN}s" --lifetime "$LIFETIME" --verify --local-agents 1 \
    --report "$WORK/kill.json" --mark-file "$MARKS" >"$WORK/bench.out" 2>"$WORK/bench.err" &
BENCH_PID=$!
PIDS+=("$BENCH_PID")

# The chat's load starts about 0.5 s (start) + its ramp + 1 s (settle) in.
sleep $(( 2 + CONNECTIONS / 1000 ))
KILLED_AT=$(date +%s%3N) # the load's start, for kill_report's gap offsets
echo "$KILLED_AT load and churn start (lifetime $LIFETIME)" >>"$MARKS"
echo "== load and churn start: chat ${RATE} msg/s over ${CONNECTIONS} + ${IDLE} idle, lifetime ${LIFETIME}, ${DURATION}s" >&2

# Samples until the chat's load ends (not its drain).
end=$(( SECONDS + DURATION ))
next_mark=$(( SECONDS + MARK_EVERY ))
while [ $SECONDS -lt $end ] && kill -0 "$BENCH_PID" 2>/dev/null; do
    kill -0 "$IMD_PID" 2>/dev/null || { echo "FAILED: imd (pid $IMD_PID) died during the soak" >&2; exit 1; }
    rss=$(rss_kb "$IMD_PID")
    n=$(fds "$IMD_PID")
    file=$(( $(stat -c %s "$WORK/data/imd.redb") / 1024 ))
    echo "$(date +%s) $rss $n $file" >>"$SAMPLES_FILE"
    if [ $SECONDS -ge $next_mark ]; then
        echo "$(date +%s%3N) imd $(( rss / 1024 )) MiB, $n fds, file $(( file / 1024 )) MiB" >>"$MARKS"
        echo "== $(( SECONDS - end + DURATION ))s: imd VmRSS ${rss} KiB, ${n} fds, data file ${file} KiB" >&2
        next_mark=$(( next_mark + MARK_EVERY ))
    fi
    sleep "$SAMPLE"
done
[ -z "${SAMPLES:-}" ] || cp "$SAMPLES_FILE" "$SAMPLES"

# memory_report: start, middle and end of the samples and their slopes.
# shellcheck disable=SC2317 # called by finish_kill_run
memory_report() {
    awk -v fd_slack="$FD_SLACK" '
        { t[NR] = $1; r[NR] = $2; f[NR] = $3; d[NR] = $4 }
        function slope(from, to, y,    i, n, sx, sy, sxx, sxy, x) {
            n = 0; sx = 0; sy = 0; sxx = 0; sxy = 0
            for (i = from; i <= to; i++) {
                x = (t[i] - t[from]) / 60; n++
                sx += x; sy += y[i]; sxx += x * x; sxy += x * y[i]
            }
            if (n < 2 || n * sxx - sx * sx == 0) return 0
            return (n * sxy - sx * sy) / (n * sxx - sx * sx)
        }
        END {
            if (NR < 2) { print "  too few samples"; exit }
            m = int((NR + 1) / 2)
            printf "  imd VmRSS KiB: start %d, middle %d, end %d (%d samples over %d s)\n", r[1], r[m], r[NR], NR, t[NR] - t[1]
            printf "  imd open fds:  start %d, middle %d, end %d\n", f[1], f[m], f[NR]
            printf "  data file KiB: start %d, middle %d, end %d\n", d[1], d[m], d[NR]
            printf "  slope, whole load:  RSS %+.1f KiB/min, fds %+.2f /min, file %+.1f KiB/min\n", slope(1, NR, r), slope(1, NR, f), slope(1, NR, d)
            printf "  slope, second half: RSS %+.1f KiB/min, fds %+.2f /min, file %+.1f KiB/min\n", slope(m, NR, r), slope(m, NR, f), slope(m, NR, d)
            if (f[NR] - f[1] > fd_slack) {
                printf "FAILED: imd holds %d more fds at the end than at the start (FD_SLACK %d)\n", f[NR] - f[1], fd_slack
                exit 1
            }
        }' "$SAMPLES_FILE"
}

# shellcheck disable=SC2317 # called by finish_kill_run
show_churn() {
    echo "  churn: chat $(json "$WORK/kill.json" .connections.churned) closes + reopens, \
$(json "$WORK/kill.json" .connections.reconnects) reconnects, $(json "$WORK/kill.json" .connections.dropped) dropped by imd; \
failed handshakes $(json "$WORK/kill.json" .connections.failed_by_cause)"
    # its load outlasts the chat's by 20 s, then it stops by itself
    wait "$IDLE_PID" 2>/dev/null || true
    forget_pid "$IDLE_PID"
    if [ -s "$WORK/idle.json" ]; then
        echo "  churn: idle $(json "$WORK/idle.json" .connections.churned) closes + reopens, \
$(json "$WORK/idle.json" .connections.reconnects) reconnects, $(json "$WORK/idle.json" .connections.dropped) dropped by imd, \
open at end $(json "$WORK/idle.json" .connections.open_at_end) of ${IDLE}"
    fi
    memory_report || { echo "FAILED: sockets leak" >&2; exit 1; }
}

finish_kill_run \
    "soak with churn: ${DURATION}s, chat ${RATE} msg/s over ${CONNECTIONS} connections + ${IDLE} idle, every connection reopening every ${LIFETIME}, one imd node (embedded store, retention ${RETENTION}):" \
    "  (gap offsets are from the start of the load)" show_churn
