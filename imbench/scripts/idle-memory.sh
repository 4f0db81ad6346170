#!/usr/bin/env bash
# imd's resident memory per idle WebSocket connection.
#
# Builds release binaries, starts imd on a temp data dir, records its VmRSS, opens
# CONNECTIONS idle connections with one imbench agent process over several source
# addresses, samples imd's VmRSS once they are all open and again late in the hold
# (after imd's heartbeat pings have gone round), prints the growth per connection and
# imbench's own, then stops everything it started (by PID). Bounded: about
# CONNECTIONS/RAMP + HOLD + 60 s after the build.
#
#   imbench/scripts/idle-memory.sh            # 15000 connections
#   CONNECTIONS=5000 HOLD=10 imbench/scripts/idle-memory.sh
source "$(dirname "$0")/lib.sh"

CONNECTIONS=${CONNECTIONS:-15000}
RAMP=${RAMP:-3000}
HOLD=${HOLD:-30}
SOURCES=${SOURCES:-127.0.0.2-127.0.0.10}
SECRET="idle-memory-$$"
RAMP_S=$(( (CONNECTIONS + RAMP - 1) / RAMP ))
BUDGET=$(( RAMP_S + HOLD + 60 ))

[ "${SKIP_BUILD:-0}" = 1 ] || build
start_imd "$SECRET" "$BUDGET"
sleep 1
RSS0=$(rss_kb "$IMD_PID")
FD0=$(fds "$IMD_PID")
echo "== imd before: VmRSS ${RSS0} KiB, ${FD0} fds" >&2

timeout "$BUDGET" "$IMBENCH_BIN" run --target "$IMD_URL" --token-secret "$SECRET" \
    --scenario idle --connections "$CONNECTIONS" --ramp "$RAMP" --duration "${HOLD}s" \
    --source-ips "$SOURCES" --local-agents 1 --report "$WORK/idle.json" \
    >"$WORK/bench.out" 2>"$WORK/bench.err" &
BENCH_PID=$!
PIDS+=("$BENCH_PID")

# Wait until imd holds every connection (its fd count), at most the ramp + 20 s.
wait_connections "$IMD_PID" "$FD0" "$CONNECTIONS" "$BENCH_PID" $(( RAMP_S + 20 ))
OPEN=$(( $(fds "$IMD_PID") - FD0 ))
RSS1=$(rss_kb "$IMD_PID")
HELD_AT=$SECONDS
echo "== imd with all open: VmRSS ${RSS1} KiB, ${OPEN} connection fds" >&2
# $BENCH_PID is `timeout`; imbench is its child, and the agent is imbench's child.
# (a child may be started by any thread, so read every thread's list)
children() { cat /proc/"$1"/task/*/children 2>/dev/null | awk '{print $1}' || true; }
IMBENCH_PID=$(children "$BENCH_PID")
AGENT_PID=""
[ -n "$IMBENCH_PID" ] && AGENT_PID=$(children "$IMBENCH_PID")
AGENT_RSS=""
[ -n "$AGENT_PID" ] && AGENT_RSS=$(rss_kb "$AGENT_PID")
# Sample again late in the hold, after imd's heartbeat pings (every idle-timeout/3,
# 20 s by default) have gone round: the pong path may grow per-connection buffers.
LATE=$(( HOLD - 4 ))
while [ $(( SECONDS - HELD_AT )) -lt "$LATE" ] && kill -0 "$BENCH_PID" 2>/dev/null; do sleep 1; done
OPEN2=$(( $(fds "$IMD_PID") - FD0 ))
RSS2=$(rss_kb "$IMD_PID")
echo "== imd $(( SECONDS - HELD_AT ))s later: VmRSS ${RSS2} KiB, ${OPEN2} connection fds" >&2

wait "$BENCH_PID" || echo "imbench exited with $?" >&2
cat "$WORK/bench.out"
OPENED=$(json "$WORK/idle.json" .connections.opened)
FAILED=$(json "$WORK/idle.json" .connections.failed)
DROPPED=$(json "$WORK/idle.json" .connections.dropped)
HS=$(json "$WORK/idle.json" .connections.handshakes_per_s)

echo
echo "connections: target ${CONNECTIONS}, opened ${OPENED}, failed ${FAILED}, dropped ${DROPPED}, held at sample ${OPEN}"
echo "handshakes per second (avg over the ramp): ${HS}"
echo "imd VmRSS: ${RSS0} KiB before, ${RSS1} KiB with ${OPEN} open, ${RSS2} KiB with ${OPEN2} open ${LATE}s later"
if [ "$OPEN" -gt 0 ] && [ "$OPEN2" -gt 0 ]; then
    echo "imd RSS growth per idle connection: $(( (RSS1 - RSS0) * 1024 / OPEN )) bytes just after the ramp, $(( (RSS2 - RSS0) * 1024 / OPEN2 )) bytes late in the hold"
    if [ -n "$AGENT_RSS" ]; then
        echo "imbench agent VmRSS: ${AGENT_RSS} KiB, $(( AGENT_RSS * 1024 / OPEN )) bytes per connection (whole process)"
    fi
fi
