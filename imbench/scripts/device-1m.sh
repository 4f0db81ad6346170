#!/usr/bin/env bash
# One million idle WebSocket connections on one big box (16 cores, 128 GiB, an
# open-files limit of 20,000 per process, no Rust toolchain), from prebuilt release
# binaries, in well under 10 minutes.
#
# The load goes to one cluster: a redis-server, one gateway (gateway,dispatcher) and
# IMDS worker processes (each on its own port, rate limits off, each under the
# per-process fd limit; every connection's route is written to Redis before its 101).
# CLUSTER=0 runs IMDS independent single-node imd processes instead. imbench spreads
# the connections over the workers (connection i to target i mod IMDS for idle) from
# AGENTS local agent processes over the SOURCES source addresses. The script
# raises the kernel limits with sysctl -w when it runs as root (SYSCTL=0 skips that),
# records every imd's RSS before the ramp, once everything is open and late in the
# hold, imbench's own RSS (coordinator + agents), handshakes per second, then stops
# everything it started by PID and writes a summary to $OUT_DIR/summary.txt (with the
# JSON report, its chart and the per-imd table beside it).
#
#   BIN=/path/to/release imbench/scripts/device-1m.sh
#   BIN=target/release IMDS=3 CONNECTIONS=6000 AGENTS=3 SOURCES=127.0.0.2-127.0.0.11 \
#       RAMP=3000 HOLD=10 SYSCTL=0 imbench/scripts/device-1m.sh      # small, anywhere
#
# Needs bash, coreutils, awk, grep, sed; nothing else (no jq, no python). To carry the
# binaries, pack them first: `imbench/scripts/device-pack.sh DIR` strips imd and
# imbench into DIR and copies redis-server with its libraries and loader into
# DIR/redis/, so that it runs on a box without Redis installed.
set -euo pipefail

BIN=${BIN:?set BIN to the folder holding the release imd and imbench binaries}
IMD_BIN="$BIN/imd"
IMBENCH_BIN="$BIN/imbench"
IMDS=${IMDS:-51}
CONNECTIONS=${CONNECTIONS:-1000000}
AGENTS=${AGENTS:-51}
SOURCES=${SOURCES:-127.0.0.2-127.0.0.201}
RAMP=${RAMP:-25000}       # connections per second over all agents: 40 s for 1M
HOLD=${HOLD:-40}          # seconds with everything open
BUDGET=${BUDGET:-570}     # hard bound of the whole script, seconds (under 10 minutes)
SYSCTL=${SYSCTL:-1}
CLUSTER=${CLUSTER:-1}
OUT_DIR=${OUT_DIR:-$PWD/device-1m-out}
SECRET="device-1m-$$-$RANDOM"
ADMIN="device-1m-admin-$$-$RANDOM"

T_START=$SECONDS
for b in "$IMD_BIN" "$IMBENCH_BIN"; do
    [ -x "$b" ] || { echo "missing executable $b" >&2; exit 2; }
done
# redis-server: packed (with its own loader and libraries), else the installed one.
REDIS_CMD=()
if [ "$CLUSTER" = 1 ]; then
    if [ -x "$BIN/redis/redis-server" ] && [ -e "$BIN/redis/ld-linux-x86-64.so.2" ]; then
        REDIS_CMD=("$BIN/redis/ld-linux-x86-64.so.2" --library-path "$BIN/redis" "$BIN/redis/redis-server")
    elif command -v redis-server >/dev/null; then
        REDIS_CMD=(redis-server)
    else
        echo "CLUSTER=1 needs redis-server: pack it (device-pack.sh) or install it" >&2
        exit 2
    fi
fi
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d -t device-1m.XXXXXX)
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
log() { echo "== [$(( SECONDS - T_START ))s] $*" >&2; }

IMD_PIDS=()
REDIS_PID=""
BENCH_PID=""
WATCHDOG=""
cleanup() {
    local pid
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null || true
    [ -n "$BENCH_PID" ] && kill -TERM "$BENCH_PID" 2>/dev/null || true
    for pid in "${IMD_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${IMD_PIDS[@]}" $BENCH_PID; do
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # Redis last: the workers deregister into it as they stop.
    if [ -n "$REDIS_PID" ]; then
        kill -TERM "$REDIS_PID" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.25; done
        kill -KILL "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every process here holds up to ~20,000 sockets.
ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)
PER_IMD=$(( (CONNECTIONS + IMDS - 1) / IMDS ))
PER_AGENT=$(( (CONNECTIONS + AGENTS - 1) / AGENTS ))
if [ "$PER_IMD" -gt $(( FD_LIMIT - 100 )) ] || [ "$PER_AGENT" -gt $(( FD_LIMIT - 256 )) ]; then
    echo "plan does not fit the open-files limit $FD_LIMIT: $PER_IMD per imd, $PER_AGENT per agent; raise IMDS/AGENTS" >&2
    exit 2
fi

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
children() { cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -v '^$' || true; }
# jget SECTION KEY FILE: a number from the report's top-level SECTION object.
jget() {
    awk -v s="  \"$1\": {" -v k="\"$2\":" '
        index($0, s) == 1 { inside = 1; next }
        inside && /^  [}\]]/ { exit }
        inside && index($0, k) { v = $0; sub(/.*": */, "", v); sub(/,$/, "", v); print v; exit }
    ' "$3"
}

say "device-1m: $(date -u +%FT%TZ) on $(hostname), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), open files $FD_LIMIT"
say "plan: $CONNECTIONS idle connections, $IMDS imd ($PER_IMD each), $AGENTS agents ($PER_AGENT each), sources $SOURCES, ramp $RAMP/s, hold ${HOLD}s"

# --- kernel limits ------------------------------------------------------------------
if [ "$SYSCTL" = 1 ] && [ "$(id -u)" = 0 ]; then
    set_sysctl() {
        if sysctl -w "$1=$2" >/dev/null 2>&1; then
            say "sysctl $1 = $(sysctl -n "$1" | tr '\t' ' ')"
        else
            say "sysctl $1: could not set (left at $(sysctl -n "$1" 2>/dev/null | tr '\t' ' ' || echo absent))"
        fi
    }
    set_sysctl net.ipv4.ip_local_port_range "1024 65535"
    set_sysctl net.core.somaxconn 65535
    set_sysctl net.ipv4.tcp_max_syn_backlog 65535
    # 4 KiB pages: pressure at 8 GiB, hard limit 16 GiB of socket buffers
    set_sysctl net.ipv4.tcp_mem "1048576 2097152 4194304"
    # absent when conntrack is not loaded (loopback traffic is then not tracked at all)
    [ -e /proc/sys/net/netfilter/nf_conntrack_max ] && set_sysctl net.netfilter.nf_conntrack_max 4194304
    set_sysctl fs.file-max 4194304
else
    say "sysctl: skipped ($( [ "$SYSCTL" = 1 ] && echo "not root" || echo "SYSCTL=0" )); ip_local_port_range $(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range)"
fi

# --- redis and imd processes --------------------------------------------------------
NODE_ARGS=()
if [ "$CLUSTER" = 1 ]; then
    REDIS_PORT=${REDIS_PORT:-6399}
    # Idle connections write only their routes: no persistence needed for this test.
    "${REDIS_CMD[@]}" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --maxclients 10000 --dir "$WORK" >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 100); do
        grep -q 'Ready to accept connections' "$WORK/redis.log" 2>/dev/null && break
        kill -0 "$REDIS_PID" 2>/dev/null || { cat "$WORK/redis.log" >&2; echo "redis-server exited" >&2; exit 1; }
        sleep 0.1
    done
    say "redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT"
    NODE_ARGS=(--redis "redis://127.0.0.1:$REDIS_PORT" --admin-token "$ADMIN")
    mkdir -p "$WORK/gw"
    "$IMD_BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/gw" --token-secret "$SECRET" \
        "${NODE_ARGS[@]}" --roles gateway,dispatcher --node-id gw \
        >"$WORK/gw.out" 2>"$WORK/gw.err" &
    GW_PID=$!
fi
log "starting $IMDS imd"
for n in $(seq 1 "$IMDS"); do
    mkdir -p "$WORK/imd$n"
    ROLE_ARGS=()
    [ "$CLUSTER" = 1 ] && ROLE_ARGS=(--roles worker --node-id "w$n")
    "$IMD_BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/imd$n" --token-secret "$SECRET" \
        --connect-rate 0 --send-rate 0 "${NODE_ARGS[@]}" "${ROLE_ARGS[@]}" \
        >"$WORK/imd$n.out" 2>"$WORK/imd$n.err" &
    IMD_PIDS+=("$!")
done
[ "$CLUSTER" = 1 ] && IMD_PIDS+=("$GW_PID")
# One watchdog for the whole script: nothing outlives the budget.
(
    sleep "$BUDGET"
    echo "device-1m: budget of ${BUDGET}s spent; stopping" >&2
    kill -TERM "${IMD_PIDS[@]}" $REDIS_PID 2>/dev/null
) &
WATCHDOG=$!
TARGETS=()
for n in $(seq 1 "$IMDS"); do
    listen=""
    for _ in $(seq 1 300); do
        listen=$(grep -o '"listen":"[^"]*"' "$WORK/imd$n.out" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
        [ -n "$listen" ] && break
        kill -0 "${IMD_PIDS[$((n - 1))]}" 2>/dev/null || { cat "$WORK/imd$n.err" >&2; echo "imd $n exited" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$listen" ] || { echo "imd $n printed no ready line in 30 s" >&2; exit 1; }
    TARGETS+=(--target "http://$listen")
    echo "$n ${IMD_PIDS[$((n - 1))]} $listen" >>"$WORK/imds"
done
# Let the cluster form (workers keep an RPC connection to each other, found within a
# discovery tick) before the baseline of descriptors and memory.
sleep $( [ "$CLUSTER" = 1 ] && echo 4 || echo 1 )
declare -A RSS0 FD0
SUM0=0
for pid in "${IMD_PIDS[@]}"; do
    RSS0[$pid]=$(rss_kb "$pid"); FD0[$pid]=$(fds "$pid")
    SUM0=$(( SUM0 + RSS0[$pid] ))
done
log "imd ready: ${SUM0} KiB RSS in total"

# --- the load -----------------------------------------------------------------------
RAMP_S=$(( (CONNECTIONS + RAMP - 1) / RAMP ))
RUN_LIMIT=$(( BUDGET - (SECONDS - T_START) - 20 ))
log "imbench: ramp ${RAMP_S}s, hold ${HOLD}s (bounded at ${RUN_LIMIT}s)"
timeout "$RUN_LIMIT" "$IMBENCH_BIN" run "${TARGETS[@]}" --token-secret "$SECRET" \
    --scenario idle --connections "$CONNECTIONS" --ramp "$RAMP" --duration "${HOLD}s" \
    --source-ips "$SOURCES" --local-agents "$AGENTS" --connect-timeout 30s \
    --report "$OUT_DIR/report.json" >"$OUT_DIR/imbench.out" 2>"$OUT_DIR/imbench.err" &
BENCH_PID=$!

open_total() {
    local pid t=0
    for pid in "${IMD_PIDS[@]}"; do t=$(( t + $(fds "$pid") - FD0[$pid] )); done
    echo "$t"
}
# Wait for every connection, at most the ramp + 60 s.
deadline=$(( SECONDS + RAMP_S + 60 ))
OPEN=0
while [ $SECONDS -lt $deadline ] && kill -0 "$BENCH_PID" 2>/dev/null; do
    OPEN=$(open_total)
    [ "$OPEN" -ge "$CONNECTIONS" ] && break
    sleep 2
done
ALL_OPEN_AT=$SECONDS
sleep 3 # the last handshakes settle
OPEN=$(open_total)
# imbench's own memory: `timeout` → imbench (coordinator) → agents.
COORD=$(children "$BENCH_PID" | head -1)
AGENT_PIDS=$( [ -n "$COORD" ] && children "$COORD" || true)
BENCH_RSS=0
for pid in $COORD $AGENT_PIDS; do BENCH_RSS=$(( BENCH_RSS + $(rss_kb "$pid") )); done
declare -A RSS1
SUM1=0
for pid in "${IMD_PIDS[@]}"; do RSS1[$pid]=$(rss_kb "$pid"); SUM1=$(( SUM1 + RSS1[$pid] )); done
SOCKSTAT=$(awk '/^TCP:/' /proc/net/sockstat 2>/dev/null || true)
log "open: $OPEN; imd RSS ${SUM1} KiB; imbench RSS ${BENCH_RSS} KiB"

# Late in the hold, after imd's heartbeat pings (every 20 s) have gone round.
LATE=$(( HOLD - 6 ))
while [ $(( SECONDS - ALL_OPEN_AT )) -lt "$LATE" ] && kill -0 "$BENCH_PID" 2>/dev/null; do sleep 1; done
OPEN2=$(open_total)
declare -A RSS2
SUM2=0
for pid in "${IMD_PIDS[@]}"; do RSS2[$pid]=$(rss_kb "$pid"); SUM2=$(( SUM2 + RSS2[$pid] )); done
BENCH_RSS2=0
for pid in $COORD $AGENT_PIDS; do BENCH_RSS2=$(( BENCH_RSS2 + $(rss_kb "$pid") )); done
log "late in the hold: open $OPEN2; imd RSS ${SUM2} KiB"

rc=0
wait "$BENCH_PID" || rc=$?
BENCH_PID=""
log "imbench exited with $rc"
{
    echo "# n pid listen rss_before_kib rss_all_open_kib rss_late_kib"
    while read -r n pid listen; do
        echo "$n $pid $listen ${RSS0[$pid]} ${RSS1[$pid]} ${RSS2[$pid]}"
    done <"$WORK/imds"
} >"$OUT_DIR/imds.txt"

# --- summary ------------------------------------------------------------------------
R="$OUT_DIR/report.json"
per() { [ "$2" -gt 0 ] && echo $(( $1 * 1024 / $2 )) || echo "-"; }
say ""
if [ -s "$R" ]; then
    say "imbench: opened $(jget connections opened "$R") of $(jget connections target "$R"), failed $(jget connections failed "$R"), dropped $(jget connections dropped "$R"), open at end $(jget connections open_at_end "$R")"
    say "handshakes per second: $(jget connections handshakes_per_s "$R") over the ramp (peak one-second $(jget connections handshakes_per_s_peak "$R"))"
    grep -A3 '"errors": \[' "$R" | grep -E '"kind"|"count"' | head -6 | sed 's/^ */  error /' | tee -a "$SUMMARY" || true
else
    say "imbench wrote no report (exit $rc); see imbench.err"
fi
say "connections held by the imd processes: $OPEN just after the ramp, $OPEN2 late in the hold"
say "imd RSS, all $IMDS: ${SUM0} KiB before, ${SUM1} KiB all open, ${SUM2} KiB late in the hold"
say "imd RSS per connection: $(per $(( SUM1 - SUM0 )) "$OPEN") bytes all open, $(per $(( SUM2 - SUM0 )) "$OPEN2") bytes late in the hold (growth over the empty processes)"
say "imbench RSS (coordinator + $(echo $AGENT_PIDS | wc -w) agents): ${BENCH_RSS} KiB all open, ${BENCH_RSS2} KiB late; $(per "$BENCH_RSS" "$OPEN") bytes per connection (whole processes)"
say "kernel with all open: $SOCKSTAT"
[ -n "$REDIS_PID" ] && say "redis-server RSS late in the hold: $(rss_kb "$REDIS_PID") KiB (every connection's route)"
say "wall: $(( SECONDS - T_START ))s in total; imbench exit $rc"
log "summary in $SUMMARY"
cp "$WORK/imds" "$OUT_DIR/imds.list" 2>/dev/null || true
exit "$rc"
