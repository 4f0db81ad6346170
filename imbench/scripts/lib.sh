# Shared helpers of the imbench scripts: build, start imd on a temp data dir, wait for
# its ready line, read a process's RSS, and stop everything we started by PID.
# Sourced, not run.

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="$ROOT/target/release"
# Override to measure other builds (SKIP_BUILD=1 skips `cargo build`).
IMD_BIN=${IMD_BIN:-$BIN/imd}
IMBENCH_BIN=${IMBENCH_BIN:-$BIN/imbench}
WORK=$(mktemp -d -t imbench.XXXXXX)
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # give each a moment, then make sure
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every process here may hold thousands of sockets.
ulimit -n "$(ulimit -Hn)"

build() {
    echo "== building release binaries" >&2
    (cd "$ROOT" && timeout 1800 cargo build --release --locked -p imd -p imbench >&2)
}

# start_imd SECRET MAX_SECONDS [LISTEN] [DATA_DIR]: starts imd (default: a free port
# on 127.0.0.1 and $WORK/data), sets IMD_PID, IMD_URL, IMD_WATCHDOG and IMD_OUT.
# Flags in the array IMD_ARGS are added (cluster mode: --redis, --roles, …).
IMD_ARGS=()
start_imd() {
    local secret=$1 max=$2 listen_arg=${3:-127.0.0.1:0} data=${4:-$WORK/data}
    IMD_OUT="$WORK/imd.$RANDOM$RANDOM.out"
    "$IMD_BIN" serve --listen "$listen_arg" --data-dir "$data" --token-secret "$secret" \
        --connect-rate 0 --send-rate 0 "${IMD_ARGS[@]}" \
        >"$IMD_OUT" 2>>"$WORK/imd.err" &
    IMD_PID=$!
    PIDS+=("$IMD_PID")
    # watchdog: imd never outlives the script's time budget
    (sleep "$max"; kill -TERM "$IMD_PID" 2>/dev/null) &
    IMD_WATCHDOG=$!
    PIDS+=("$IMD_WATCHDOG")
    local listen=""
    for _ in $(seq 1 100); do
        listen=$(grep -o '"listen":"[^"]*"' "$IMD_OUT" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
        [ -n "$listen" ] && break
        kill -0 "$IMD_PID" 2>/dev/null || { cat "$WORK/imd.err" >&2; echo "imd exited" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$listen" ] || { echo "imd printed no ready line in 10 s" >&2; exit 1; }
    IMD_URL="http://$listen"
    echo "== imd pid $IMD_PID on $IMD_URL" >&2
}

# forget_pid PID: drop a process we already ended and reaped from the cleanup list, so
# that cleanup never signals a PID the kernel may have handed to someone else.
forget_pid() {
    local keep=() pid
    for pid in "${PIDS[@]}"; do
        [ "$pid" = "$1" ] || keep+=("$pid")
    done
    PIDS=("${keep[@]}")
}

# rss_kb PID: resident set size in KiB (VmRSS), empty if the process is gone.
rss_kb() {
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true
}

# fds PID: number of open file descriptors.
fds() {
    ls "/proc/$1/fd" 2>/dev/null | wc -l
}

# wait_connections PID FD0 N LOADER MAX_SECONDS: waits until process PID holds N more
# file descriptors than FD0 (its connections), at most MAX_SECONDS, or until the load
# process LOADER is gone; then lets the last handshakes settle for 2 s.
wait_connections() {
    local pid=$1 fd0=$2 n=$3 loader=$4 deadline=$(( SECONDS + $5 ))
    while [ $(( $(fds "$pid") - fd0 )) -lt "$n" ] && [ $SECONDS -lt $deadline ]; do
        kill -0 "$loader" 2>/dev/null || break
        sleep 0.5
    done
    sleep 2
}

# json FILE EXPR: one value from a JSON file (jq, or python3).
json() {
    if command -v jq >/dev/null; then
        jq -r "$2" "$1"
    else
        python3 -c 'import json,sys
v=json.load(open(sys.argv[1]))
for k in sys.argv[2].lstrip(".").split("."):
    v=v[k]
print(v)' "$1" "$2"
    fi
}

# start_redis MAX_SECONDS [EXTRA…]: starts redis-server on a free port in $WORK with
# the extra settings, sets REDIS_PID and REDIS_URL. Stopped by cleanup like the rest.
start_redis() {
    local max=$1 port
    shift
    command -v redis-server >/dev/null || { echo "redis-server is missing (apt-get install redis-server)" >&2; exit 1; }
    for _ in 1 2 3 4 5; do
        port=$(( 20000 + RANDOM % 20000 ))
        redis-server --port "$port" --bind 127.0.0.1 --dir "$WORK" --save '' "$@" \
            >>"$WORK/redis.log" 2>&1 &
        REDIS_PID=$!
        PIDS+=("$REDIS_PID")
        (sleep "$max"; kill -TERM "$REDIS_PID" 2>/dev/null) &
        PIDS+=("$!")
        for _ in $(seq 1 50); do
            if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
                REDIS_URL="redis://127.0.0.1:$port"
                echo "== redis pid $REDIS_PID on $REDIS_URL ($*)" >&2
                return 0
            fi
            kill -0 "$REDIS_PID" 2>/dev/null || break
            sleep 0.1
        done
    done
    echo "could not start redis-server" >&2
    exit 1
}

# start_node SECRET ADMIN MAX_SECONDS ROLES ID: starts one cluster node on $REDIS_URL
# (start_redis first), on a free port; sets IMD_PID and IMD_URL like start_imd.
start_node() {
    IMD_ARGS=(--redis "$REDIS_URL" --roles "$4" --node-id "$5" --admin-token "$2")
    start_imd "$1" "$3" 127.0.0.1:0 "$WORK/data-$5"
    IMD_ARGS=()
}

# cluster_nodes GATEWAY_URL ADMIN [registered]: ids of the nodes in the gateway's
# cluster view that it reached over RPC (with "registered": every node still in the
# registry, reached or not), sorted, space-separated.
cluster_nodes() {
    curl -s -H "authorization: Bearer $2" "$1/admin/v1/cluster" |
        python3 -c 'import json,sys
every = len(sys.argv) > 1
print(" ".join(sorted(n["node_id"] for n in json.load(sys.stdin)["nodes"] if every or n["version"])))' ${3:+"$3"}
}

# kill_report REPORT KILLED_AT_MS: the verified chat's outcome around a kill -9, from
# imbench's JSON report, one indented line each; sets LOST.
kill_report() {
    local r=$1 killed=$2 gap_ms gap_from
    LOST=$(json "$r" .messages.lost)
    gap_ms=$(json "$r" .delivery_gap.longest_ms)
    gap_from=$(json "$r" .delivery_gap.from_unix_ms)
    echo "  sent $(json "$r" .messages.sent), acked $(json "$r" .messages.acked), delivered $(json "$r" .messages.delivered), \
unacked at end $(json "$r" .messages.unacked)"
    echo "  lost ${LOST}, lost_echo $(json "$r" .messages.lost_echo), duplicated $(json "$r" .messages.duplicated), \
out_of_order $(json "$r" .messages.out_of_order), retransmits $(json "$r" .messages.retransmits)"
    echo "  dropped $(json "$r" .connections.dropped) connections, reconnects $(json "$r" .connections.reconnects)"
    if [ "$gap_from" != "None" ] && [ "$gap_from" != "null" ]; then
        echo "  longest delivery gap (no device received anything): ${gap_ms} ms, starting $(( gap_from - killed )) ms from the kill"
    else
        echo "  longest delivery gap (no device received anything): none of 50 ms or more"
    fi
    echo "  latency ms: p50 $(json "$r" .latency_ms.p50), p99 $(json "$r" .latency_ms.p99), \
p99.9 $(json "$r" .latency_ms.p999), max $(json "$r" .latency_ms.max)"
}

# finish_kill_run TITLE LAST_LINE [THEN]: waits for imbench ($BENCH_PID), prints its
# output, then TITLE, kill_report of $WORK/kill.json against $KILLED_AT, LAST_LINE, and
# what the command THEN prints (run once the traffic is over); with REPORT=FILE.json,
# keeps the report there and its chart as FILE.html; exits 1 when a message was lost,
# else with imbench's status.
finish_kill_run() {
    local rc=0
    wait "$BENCH_PID" || rc=$?
    forget_pid "$BENCH_PID"
    cat "$WORK/bench.out"
    grep -v '^\[' "$WORK/bench.err" | tail -5 >&2 || true
    echo
    echo "$1"
    kill_report "$WORK/kill.json" "$KILLED_AT"
    echo "$2"
    if [ -n "${REPORT:-}" ]; then
        cp "$WORK/kill.json" "$REPORT"
        cp "$WORK/kill.html" "${REPORT%.json}.html"
        echo "  report kept in $REPORT, its chart in ${REPORT%.json}.html"
    fi
    [ -z "${3:-}" ] || "$3"
    [ "$LOST" = 0 ] || { echo "FAILED: ${LOST} message(s) lost" >&2; exit 1; }
    exit "$rc"
}

# start_test_cluster SECRET ADMIN MAX_SECONDS: start_redis (AOF per $AOF: always by
# default, everysec, or no), then a gateway gw1 (gateway,dispatcher) and workers w1
# and w2, and waits until the gateway reaches both; sets GW_URL, W1_URL, W2_URL,
# W2_PID.
start_test_cluster() {
    local secret=$1 admin=$2 max=$3
    if [ "${AOF:-always}" = no ]; then
        start_redis "$max" --appendonly no
    else
        start_redis "$max" --appendonly yes --appendfsync "${AOF:-always}"
    fi
    start_node "$secret" "$admin" "$max" gateway,dispatcher gw1; GW_URL=$IMD_URL
    start_node "$secret" "$admin" "$max" worker w1; W1_URL=$IMD_URL
    start_node "$secret" "$admin" "$max" worker w2; W2_URL=$IMD_URL; W2_PID=$IMD_PID
    for _ in $(seq 1 50); do
        [ "$(cluster_nodes "$GW_URL" "$admin")" = "gw1 w1 w2" ] && break
        sleep 0.1
    done
    echo "== cluster: $(cluster_nodes "$GW_URL" "$admin")" >&2
}
