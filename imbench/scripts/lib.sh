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
# The per-ip connect limit is off unless CONNECT_RATE (and CONNECT_BURST) are set.
# Flags in the array IMD_ARGS are added (cluster mode: --redis, --roles, …); its log
# goes to $IMD_ERR (default $WORK/imd.err).
IMD_ARGS=()
start_imd() {
    local secret=$1 max=$2 listen_arg=${3:-127.0.0.1:0} data=${4:-$WORK/data}
    IMD_OUT="$WORK/imd.$RANDOM$RANDOM.out"
    "$IMD_BIN" serve --listen "$listen_arg" --data-dir "$data" --token-secret "$secret" \
        --connect-rate "${CONNECT_RATE:-0}" ${CONNECT_BURST:+--connect-burst "$CONNECT_BURST"} \
        --send-rate 0 "${IMD_ARGS[@]}" \
        >"$IMD_OUT" 2>>"${IMD_ERR:-$WORK/imd.err}" &
    IMD_PID=$!
    PIDS+=("$IMD_PID")
    # watchdog: imd never outlives the script's time budget
    (sleep "$max"; kill -TERM "$IMD_PID" 2>/dev/null) &
    IMD_WATCHDOG=$!
    PIDS+=("$IMD_WATCHDOG")
    local listen=""
    for _ in $(seq 1 $(( ${READY_WAIT:-10} * 10 ))); do
        listen=$(grep -o '"listen":"[^"]*"' "$IMD_OUT" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
        [ -n "$listen" ] && break
        kill -0 "$IMD_PID" 2>/dev/null || { cat "${IMD_ERR:-$WORK/imd.err}" >&2; echo "imd exited" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$listen" ] || { echo "imd printed no ready line in ${READY_WAIT:-10} s" >&2; exit 1; }
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
# the extra settings, sets REDIS_PID, REDIS_URL, REDIS_PORT, REDIS_ARGS and
# REDIS_WATCHDOG. Stopped by cleanup like the rest.
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
        REDIS_WATCHDOG=$!
        PIDS+=("$REDIS_WATCHDOG")
        for _ in $(seq 1 50); do
            if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
                REDIS_URL="redis://127.0.0.1:$port"
                REDIS_PORT=$port
                REDIS_ARGS=("$@")
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
# (start_redis first), on a free port, logging to $WORK/imd-ID.err; sets IMD_PID and
# IMD_URL like start_imd.
start_node() {
    IMD_ARGS=(--redis "$REDIS_URL" --roles "$4" --node-id "$5" --admin-token "$2")
    IMD_ERR="$WORK/imd-$5.err"
    start_imd "$1" "$3" 127.0.0.1:0 "$WORK/data-$5"
    IMD_ARGS=()
    unset IMD_ERR
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
# GW_PID, W1_PID, W2_PID.
start_test_cluster() {
    local secret=$1 admin=$2 max=$3
    if [ "${AOF:-always}" = no ]; then
        start_redis "$max" --appendonly no
    else
        start_redis "$max" --appendonly yes --appendfsync "${AOF:-always}"
    fi
    start_node "$secret" "$admin" "$max" gateway,dispatcher gw1; GW_URL=$IMD_URL; GW_PID=$IMD_PID
    start_node "$secret" "$admin" "$max" worker w1; W1_URL=$IMD_URL; W1_PID=$IMD_PID
    start_node "$secret" "$admin" "$max" worker w2; W2_URL=$IMD_URL; W2_PID=$IMD_PID
    for _ in $(seq 1 50); do
        [ "$(cluster_nodes "$GW_URL" "$admin")" = "gw1 w1 w2" ] && break
        sleep 0.1
    done
    echo "== cluster: $(cluster_nodes "$GW_URL" "$admin")" >&2
}

# start_cluster_chat MAX_SECONDS: starts imbench's verified chat ($RATE msg/s over
# $CONNECTIONS connections for $DURATION s, then $DRAIN s) on both workers of
# start_test_cluster with --spread (the two ends of every pair on different workers),
# the report in $WORK/kill.json, the marks from $MARKS (created empty); sets
# BENCH_PID, for finish_kill_run.
start_cluster_chat() {
    MARKS="$WORK/marks"
    : >"$MARKS"
    timeout "$1" "$IMBENCH_BIN" run --target "$W1_URL" --target "$W2_URL" --spread \
        --token-secret "$SECRET" --scenario chat --connections "$CONNECTIONS" --rate "$RATE" \
        --duration "${DURATION}s" --drain "${DRAIN}s" --verify --local-agents 1 \
        --report "$WORK/kill.json" --mark-file "$MARKS" >"$WORK/bench.out" 2>"$WORK/bench.err" &
    BENCH_PID=$!
    PIDS+=("$BENCH_PID")
}

# into_traffic SECONDS: sleeps until SECONDS into the traffic of the run just started
# (about 0.5 s start + the ramp at 1000 conn/s + 1 s settle come first); fails when
# imbench ended meanwhile.
into_traffic() {
    sleep $(( 2 + CONNECTIONS / 1000 + $1 ))
    kill -0 "$BENCH_PID" 2>/dev/null || { cat "$WORK/bench.err" >&2; echo "imbench ended early" >&2; exit 1; }
}

# mark LABEL: writes now (unix ms) and LABEL to the chart's mark file; sets MARKED_AT.
mark() {
    MARKED_AT=$(date +%s%3N)
    echo "$MARKED_AT $1" >>"$MARKS"
}

# histogram URL NAME [SCALE UNIT]: one line on the node's Prometheus histogram NAME
# (every label summed): its count, its mean and the bucket bounds its p50, p99, p99.9
# and largest value fall under, the values multiplied by SCALE (1000: seconds in ms).
histogram() {
    local url=$1 name=$2 scale=${3:-1} unit=${4:-}
    curl -s --max-time 5 "$url/metrics" | awk -v n="$name" -v k="$scale" -v u="$unit" '
        index($1, n "_bucket") == 1 { le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le); if (!(le in c)) b[++m] = le; c[le] += $2 }
        index($1, n "_sum") == 1 { sum += $2 }
        index($1, n "_count") == 1 { count += $2 }
        function under(q,   i) { for (i = 1; i <= m; i++) if (c[b[i]] >= q * count) return (b[i] == "+Inf" ? "+Inf" : b[i] * k); return "?" }
        END {
            if (count == 0) { print "none"; exit }
            printf "%d, mean %.3g%s, p50 <= %s%s, p99 <= %s%s, p99.9 <= %s%s, max <= %s%s\n", count, k * sum / count, u, under(0.5), u, under(0.99), u, under(0.999), u, under(1), u
        }'
}

# counters URL NAME…: the node's Prometheus counters NAME (imd_…_total, every label
# summed, 0 when never moved), as `name value` pairs without the imd_ and _total.
counters() {
    local url=$1
    shift
    curl -s --max-time 5 "$url/metrics" | awk -v names="$*" '
        BEGIN { n = split(names, want, " "); for (i = 1; i <= n; i++) sum[want[i]] = 0 }
        { m = $1; sub(/\{.*/, "", m); if (m in sum) sum[m] += $2 }
        END { for (i = 1; i <= n; i++) { s = want[i]; sub(/^imd_/, "", s); sub(/_total$/, "", s); printf "%s%s %d", (i > 1 ? ", " : ""), s, sum[want[i]] } print "" }'
}

# alive NAME PID…: `NAME up` or `NAME DEAD` per process, space-separated.
alive() {
    local out=() name pid
    while [ $# -ge 2 ]; do
        name=$1 pid=$2
        shift 2
        if kill -0 "$pid" 2>/dev/null; then out+=("$name up"); else out+=("$name DEAD"); fi
    done
    echo "${out[*]}"
}

# stop_redis SIGNAL: sends SIGNAL (TERM: Redis saves and exits; KILL) to redis-server,
# waits for it to exit, and forgets it and its watchdog.
stop_redis() {
    kill -"$1" "$REDIS_PID"
    wait "$REDIS_PID" 2>/dev/null || true
    kill "$REDIS_WATCHDOG" 2>/dev/null || true
    wait "$REDIS_WATCHDOG" 2>/dev/null || true
    forget_pid "$REDIS_PID"
    forget_pid "$REDIS_WATCHDOG"
}

# restart_redis MAX_SECONDS: starts redis-server again on $REDIS_PORT with the same
# settings and dir (so the same AOF) as start_redis, and waits until it answers PING
# (after loading the AOF), at most 30 s; sets REDIS_PID and REDIS_WATCHDOG.
restart_redis() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK" --save '' "${REDIS_ARGS[@]}" \
        >>"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    (sleep "$1"; kill -TERM "$REDIS_PID" 2>/dev/null) &
    REDIS_WATCHDOG=$!
    PIDS+=("$REDIS_WATCHDOG")
    for _ in $(seq 1 3000); do
        redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.01
    done
    tail -20 "$WORK/redis.log" >&2
    echo "redis-server did not come back on port $REDIS_PORT" >&2
    exit 1
}

# log_lines PATTERN FILE…: the imd log lines matching PATTERN (an extended regex) in
# FILEs, without colours, timestamps and hex ids, counted alike: at most 8, the most
# frequent first, indented.
log_lines() {
    local pattern=$1
    shift
    cat "$@" | sed -E 's/\x1b\[[0-9;]*m//g' | grep -E "$pattern" |
        sed -E 's/^[^ ]+ +//; s/ (conv|uid|device|node|generation)=[^ ]+/ \1=…/g; s/[0-9a-f]{8,}/…/g; s/[0-9]{10,}/…/g' |
        sort | uniq -c | sort -rn | head -8 | sed 's/^/    /' || true
}

# routes_per_node: how many device routes name each node now, from Redis
# ($REDIS_PORT), e.g. `w1=100 w2=100`.
routes_per_node() {
    redis-cli -p "$REDIS_PORT" eval "local n, cur = {}, '0'
repeat
  local r = redis.call('SCAN', cur, 'MATCH', ARGV[1], 'COUNT', 1000)
  cur = r[1]
  for _, k in ipairs(r[2]) do
    for _, v in ipairs(redis.call('HVALS', k)) do n[v] = (n[v] or 0) + 1 end
  end
until cur == '0'
local out = {}
for k, v in pairs(n) do out[#out + 1] = k .. '=' .. v end
table.sort(out)
return out" 0 'imd:{u:*}:conns' | tr '\n' ' '
}

# delivered_around REPORT FROM_MS TO_MS: the report's first deliveries per second (its
# per-second series) from 2 s before FROM_MS to 5 s after TO_MS, and how many whole
# seconds of the load phase delivered under a tenth of its median rate.
delivered_around() {
    python3 - "$@" <<'PY'
import json, statistics, sys
r = json.load(open(sys.argv[1]))
s = r["series"]
t0, (a, b) = s["start_unix_ms"], s["load_s"]
lo, hi = int(sys.argv[2]) - 2000, int(sys.argv[3]) + 5000
secs = [x for x in s["seconds"] if a < x["t_s"] <= b]
med = statistics.median(x["delivered_per_s"] for x in secs) if secs else 0
near = [x for x in s["seconds"] if lo <= t0 + x["t_s"] * 1000 <= hi]
print("  first deliveries per second, 2 s before to 5 s after: "
      + " ".join(str(round(x["delivered_per_s"])) for x in near))
print(f"  seconds of the load phase under a tenth of the median ({round(med)}/s): "
      f"{sum(1 for x in secs if x['delivered_per_s'] < med / 10)}")
PY
}

# log_times PATTERN REF_MS FILE: the imd log lines matching PATTERN (an extended
# regex), each as milliseconds from REF_MS (unix ms) and the line without its
# timestamp and colours, at most 10.
log_times() {
    sed -E 's/\x1b\[[0-9;]*m//g' "$3" | grep -E "$1" | head -10 | python3 -c '
import datetime, sys
ref = int(sys.argv[1])
for line in sys.stdin:
    stamp, _, rest = line.strip().partition(" ")
    t = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000
    print(f"    {t - ref:+8.0f} ms {rest.strip()}")' "$2" || true
}
