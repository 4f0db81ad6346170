#!/usr/bin/env bash
# A reconnection storm: every connection of a cluster dropped at once while the
# servers stay up. How long until all are back and the chat delivers again, is
# anything lost, and does imd's memory go back to its level?
#
# Builds release binaries, starts a cluster on loopback (redis-server with AOF per
# AOF, a gateway and two workers: CONNECTIONS connections do not fit under one
# process's 20,000 open files), with each worker's per-ip connect limit raised to
# CONNECT_RATE/s, burst CONNECT_BURST (the default, 20/s and 100, is for one user per
# address; here 1,000 users share each of the 20 source addresses of SOURCES). It
# opens IDLE idle connections over SOURCES (two imbench agents), then runs a verified
# chat at RATE msg/s over CHAT connections (CONNECTIONS = IDLE + CHAT in all), both
# with --spread over the two workers. DROP_AFTER s into the chat it destroys imd's end
# of every established WebSocket on both workers at once with `ss -K` (the kernel's
# socket destroy, CONFIG_INET_DIAG_DESTROY; needs root): each client gets an RST,
# while imd keeps running and listening. imbench reconnects every connection, idle
# ones included, with full jitter (the first try within 100 ms, the window doubling
# on failure up to RECONNECT_MAX, imbench --reconnect-max, 2 s by default), to the
# other worker (--spread; SPREAD=0: to their own); the chat connections resend what
# was not acknowledged and sync. The script polls the workers' /healthz every 100 ms
# and prints, for each of STORMS drops (each once the last has recovered and AFTER s
# have passed: a second drop tells a leak from the allocator keeping its high-water
# mark): the time from the drop until all CONNECTIONS are open again, the
# longest delivery gap and when the chat delivered again, lost (must be 0) and
# duplicates, handshakes refused (by cause), and each imd process's VmRSS with all
# open before the drop, at its peak during the storm, and AFTER s after the recovery.
# The drop and the recovery are marked on the chat's chart (REPORT=FILE.json keeps
# the report and FILE.html). Exits non-zero when a message was lost or the
# connections were not all back within RECOVER_MAX s. Stops everything it started
# (by PID). Bounded: about IDLE/RAMP + DROP_AFTER + STORMS * (RECOVER_MAX + AFTER) +
# 130 s after the build; the chat runs that long whatever the recoveries take.
#
#   imbench/scripts/chaos-reconnect-storm.sh            # 19,800 idle + 200 chatting
#   SKIP_BUILD=1 IDLE=1800 SOURCES=127.0.0.2-127.0.0.3 imbench/scripts/chaos-reconnect-storm.sh
#   CONNECT_RATE=0 REPORT=/tmp/storm.json imbench/scripts/chaos-reconnect-storm.sh
#   SPREAD=0 STORMS=1 imbench/scripts/chaos-reconnect-storm.sh   # reconnect to the same worker
#   RECONNECT_MAX=30s KEEP_LOGS=/tmp/storm-logs imbench/scripts/chaos-reconnect-storm.sh
source "$(dirname "$0")/lib.sh"

IDLE=${IDLE:-19800}
CHAT=${CHAT:-200}
CONNECTIONS=$(( IDLE + CHAT ))
RATE=${RATE:-1000}
RAMP=${RAMP:-5000}
DROP_AFTER=${DROP_AFTER:-10}
STORMS=${STORMS:-2}
RECOVER_MAX=${RECOVER_MAX:-30}
AFTER=${AFTER:-20}
DRAIN=${DRAIN:-10}
SOURCES=${SOURCES:-127.0.0.2-127.0.0.21}
export CONNECT_RATE=${CONNECT_RATE:-1000} CONNECT_BURST=${CONNECT_BURST:-1000}
AOF=${AOF:-always}
SPREAD=${SPREAD:-1}
RECONNECT_MAX=${RECONNECT_MAX:-2s}
SECRET="chaos-storm-$$"
ADMIN="chaos-storm-admin-$$"
RAMP_S=$(( (IDLE + RAMP - 1) / RAMP ))
DURATION=$(( DROP_AFTER + STORMS * (RECOVER_MAX + AFTER + 2) + 5 ))
BUDGET=$(( RAMP_S + DURATION + DRAIN + 120 ))
MARKS="$WORK/marks"
: >"$MARKS"

command -v ss >/dev/null || { echo "ss (iproute2) is missing" >&2; exit 1; }
[ "${SKIP_BUILD:-0}" = 1 ] || build
start_test_cluster "$SECRET" "$ADMIN" "$BUDGET"
P1=${W1_URL##*:}
P2=${W2_URL##*:}

# open_count: WebSocket connections open on the two workers (their /healthz).
open_count() {
    local a b
    a=$(curl -s -m 1 "$W1_URL/healthz" | grep -o '"connections":[0-9]*' | cut -d: -f2 || true)
    b=$(curl -s -m 1 "$W2_URL/healthz" | grep -o '"connections":[0-9]*' | cut -d: -f2 || true)
    echo $(( ${a:-0} + ${b:-0} ))
}
# rss_all: VmRSS of w1, w2 and the gateway, in KiB, space-separated.
rss_all() { echo "$(rss_kb "$W1_PID") $(rss_kb "$W2_PID") $(rss_kb "$GW_PID")"; }
# With SPREAD=1 (the default) a pair's two ends are on different workers and every
# reconnection goes to the other worker; SPREAD=0 keeps each connection on its own.
SPREAD_ARG=()
[ "$SPREAD" = 0 ] || SPREAD_ARG=(--spread)

timeout "$BUDGET" "$IMBENCH_BIN" run --target "$W1_URL" --target "$W2_URL" "${SPREAD_ARG[@]}" \
    --token-secret "$SECRET" --scenario idle --connections "$IDLE" --ramp "$RAMP" \
    --duration "$(( DURATION + 10 ))s" --source-ips "$SOURCES" --local-agents 2 \
    --reconnect-max "$RECONNECT_MAX" \
    --report "$WORK/idle.json" >"$WORK/idle.out" 2>"$WORK/idle.err" &
IDLE_PID=$!
PIDS+=("$IDLE_PID")
deadline=$(( SECONDS + RAMP_S + 30 ))
while [ "$(open_count)" -lt "$IDLE" ] && [ $SECONDS -lt $deadline ]; do
    kill -0 "$IDLE_PID" 2>/dev/null || break
    sleep 0.5
done
echo "== $(open_count) idle connections open" >&2

timeout "$BUDGET" "$IMBENCH_BIN" run --target "$W1_URL" --target "$W2_URL" "${SPREAD_ARG[@]}" \
    --token-secret "$SECRET" --scenario chat --connections "$CHAT" --rate "$RATE" \
    --duration "${DURATION}s" --drain "${DRAIN}s" --verify --local-agents 1 \
    --reconnect-max "$RECONNECT_MAX" \
    --report "$WORK/kill.json" --mark-file "$MARKS" >"$WORK/bench.out" 2>"$WORK/bench.err" &
BENCH_PID=$!
PIDS+=("$BENCH_PID")

# The chat's load starts about 0.5 s (start) + its ramp + 1 s (settle) in.
sleep $(( 2 + CHAT / 1000 + DROP_AFTER ))
kill -0 "$BENCH_PID" 2>/dev/null || { cat "$WORK/bench.err" >&2; echo "imbench ended early" >&2; exit 1; }
read -r R1_START R2_START RG_START <<<"$(rss_all)"
KILLED_AT=""
RECOVERED_ALL=1

# storm N: drops every connection, waits until all are back (the count must first
# have fallen: imd notices the destroyed sockets within milliseconds, and the first
# poll comes after ss is done), then AFTER s; appends its figures to $WORK/storms.
storm() {
    local open_before r1b r2b rgb r1p r2p rgp r1a r2a rga lowest recovered="" n r1 r2 rg
    local at ss_end destroyed end open_recovered open_after
    open_before=$(open_count)
    read -r r1b r2b rgb <<<"$(rss_all)"
    [ "$open_before" -ge "$CONNECTIONS" ] ||
        echo "== warning: only $open_before of $CONNECTIONS connections open before drop $1" >&2
    at=$(date +%s%3N)
    destroyed=$(ss -K -H -t state established "( sport = :$P1 or sport = :$P2 )" | wc -l)
    ss_end=$(date +%s%3N)
    [ -n "$KILLED_AT" ] || KILLED_AT=$at
    echo "$at drop $1 (ss -K): $destroyed connections" >>"$MARKS"
    echo "== drop $1: ss -K destroyed $destroyed sockets of imd in $(( ss_end - at )) ms" >&2
    [ "$destroyed" -gt 0 ] || { echo "ss -K destroyed nothing (kernel without CONFIG_INET_DIAG_DESTROY, or not root?)" >&2; exit 1; }
    r1p=$r1b r2p=$r2b rgp=$rgb lowest=$open_before
    end=$(( SECONDS + RECOVER_MAX ))
    while [ $SECONDS -lt $end ]; do
        n=$(open_count)
        [ "$n" -ge "$lowest" ] || lowest=$n
        read -r r1 r2 rg <<<"$(rss_all)"
        [ "${r1:-0}" -le "$r1p" ] || r1p=$r1
        [ "${r2:-0}" -le "$r2p" ] || r2p=$r2
        [ "${rg:-0}" -le "$rgp" ] || rgp=$rg
        if [ "$lowest" -lt "$CONNECTIONS" ] && [ "$n" -ge "$CONNECTIONS" ]; then
            recovered=$(date +%s%3N)
            echo "$recovered all $n open again" >>"$MARKS"
            break
        fi
        sleep 0.1
    done
    open_recovered=$(open_count)
    # Memory back to its level? After a server ping round and the allocator's return.
    sleep "$AFTER"
    read -r r1a r2a rga <<<"$(rss_all)"
    open_after=$(open_count)
    {
        echo "  drop $1: ss -K destroyed imd's end of $destroyed connections ($open_before open) in $(( ss_end - at )) ms; the count fell to $lowest"
        if [ -n "$recovered" ]; then
            echo "    all $CONNECTIONS open again $(( recovered - at )) ms after the drop ($open_recovered then, $open_after ${AFTER}s later)"
        else
            echo "    NOT recovered within ${RECOVER_MAX}s: $open_recovered of $CONNECTIONS open (lowest $lowest)"
        fi
        echo "    imd VmRSS KiB (w1, w2, gateway): before $r1b, $r2b, $rgb; peak $r1p, $r2p, $rgp; ${AFTER}s after recovery $r1a, $r2a, $rga"
        echo "    workers together: before $(( (r1b + r2b) / 1024 )) MiB, peak $(( (r1p + r2p) / 1024 )) MiB, after $(( (r1a + r2a) / 1024 )) MiB"
    } >>"$WORK/storms"
    [ -n "$recovered" ] || RECOVERED_ALL=0
}

for s in $(seq 1 "$STORMS"); do
    storm "$s"
done

# shellcheck disable=SC2317 # called by finish_kill_run
storm_report() {
    local causes f name url
    wait "$IDLE_PID" 2>/dev/null || true
    forget_pid "$IDLE_PID"
    echo "  imd VmRSS KiB (w1, w2, gateway) with all open before the first drop: $R1_START, $R2_START, $RG_START"
    cat "$WORK/storms"
    if [ -s "$WORK/idle.json" ]; then
        echo "  idle: dropped $(json "$WORK/idle.json" .connections.dropped), reconnects $(json "$WORK/idle.json" .connections.reconnects), \
open at end $(json "$WORK/idle.json" .connections.open_at_end) of $IDLE"
    fi
    causes=$(for r in idle chat; do
        f="$WORK/$r.json"
        [ "$r" = chat ] && f="$WORK/kill.json"
        [ -s "$f" ] && echo "$r $(json "$f" .connections.failed_by_cause | tr -d '{}\n "')"
    done | tr '\n' ';')
    echo "  handshakes refused or failed, first tries and reconnections, by cause: ${causes} \
(connect limit ${CONNECT_RATE}/s, burst ${CONNECT_BURST}, per ip per worker)"
    echo "  imd's warnings and errors (all nodes), by message:"
    cat "$WORK"/imd*.err 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -aE '^[^ ]+ +(WARN|ERROR) ' |
        sed -E 's/^[^ ]+ +([A-Z]+) /\1 /; s/ [a-z_.]+=("[^"]*"|[^ ]*)//g' | cut -c1-150 |
        sort | uniq -c | sort -rn | head -8 | sed 's/^/    /' || true
    for w in "w1 $W1_URL" "w2 $W2_URL"; do
        read -r name url <<<"$w"
        echo "  $name: $(counters "$url" imd_ws_route_backlog_refusals_total imd_ws_route_failures_total imd_route_writes_skipped_total)"
        echo "  $name route write rounds: $(histogram "$url" imd_route_write_round_seconds 1000 ' ms')"
    done
    if [ -n "${KEEP_LOGS:-}" ]; then
        mkdir -p "$KEEP_LOGS"
        cp "$WORK"/imd*.err "$WORK"/redis.log "$KEEP_LOGS"/ 2>/dev/null || true
        echo "  imd's and redis's logs kept in $KEEP_LOGS"
    fi
    [ "$RECOVERED_ALL" = 1 ] || { echo "FAILED: the connections did not all come back within ${RECOVER_MAX}s" >&2; exit 1; }
}

finish_kill_run \
    "reconnection storm: ${CONNECTIONS} connections (${IDLE} idle, ${CHAT} in a verified chat at ${RATE} msg/s) over two workers (spread ${SPREAD}), all dropped at once (ss -K), ${STORMS} time(s), the first ${DROP_AFTER}s into the chat; reconnection backoff up to ${RECONNECT_MAX}:" \
    "  (gap offsets are from the first drop)" storm_report
