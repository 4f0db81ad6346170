#!/usr/bin/env bash
# Redis restarted under a verified chat across the cluster: is anything lost, how long
# do deliveries stop, and does imd take the restart for a loss of state?
#
# Starts redis-server (AOF fsync always, per AOF), one gateway (gateway,dispatcher) and
# two workers, and runs verified chat with `imbench --spread` (the two ends of every
# pair on different workers). RESTART_AFTER s into the traffic it stops Redis with
# SIGNAL (TERM, the default: Redis finishes its AOF and exits; KILL: kill -9), keeps it
# down DOWN more seconds, and starts it again on the same port with the same dir, so
# from the same AOF. With AOF always every acknowledged write is on disk, so the
# store's generation must not change: no node may log "redis lost acknowledged state"
# or kick its devices with `state_lost`. Sends while Redis is loading its AOF (it
# answers LOADING) wait for it, up to 5 s; a send refused with `internal` (Redis gone
# longer than imd's retries) is counted as refused, not lost, and fails imbench's
# verdict.
#
# Prints lost (must be 0), duplicated, refused, the longest time no device received
# anything, the first deliveries per second around the restart, how long Redis was
# down (signal to its first PONG after loading the AOF), the store's generation before
# and after, each node's counters (Redis retries, commit failures, generation changes,
# state_lost kicks, gap repairs, catch-up passes), every node's warnings and errors,
# and whether every imd process is still up, then stops everything it started (by
# PID). Exits non-zero when a message was lost, an imd process died or the generation
# changed, else with imbench's status. The stop and Redis's return are marked on
# the chart; REPORT=FILE.json keeps the report and FILE.html. Bounded: about
# DURATION + DRAIN + DOWN + 90 s after the build.
#
#   imbench/scripts/chaos-redis-restart.sh           # 2000 msg/s, 200 conns, 30 s, at 10 s
#   SIGNAL=KILL imbench/scripts/chaos-redis-restart.sh
#   DOWN=3 RATE=1000 REPORT=/tmp/redis.json imbench/scripts/chaos-redis-restart.sh
source "$(dirname "$0")/lib.sh"

RATE=${RATE:-2000}
CONNECTIONS=${CONNECTIONS:-200}
DURATION=${DURATION:-30}
RESTART_AFTER=${RESTART_AFTER:-10}
DOWN=${DOWN:-0}
DRAIN=${DRAIN:-10}
SIGNAL=${SIGNAL:-TERM}
SECRET="chaos-redis-$$"
ADMIN="chaos-redis-admin-$$"
BUDGET=$(( DURATION + DRAIN + DOWN + 90 ))
# What each node counts around a Redis outage.
COUNTERS=(imd_redis_retries_total imd_commit_failures_total imd_state_lost_total
    imd_state_lost_kicks_total imd_push_gaps_repaired_total imd_catch_up_passes_total)

[ "${SKIP_BUILD:-0}" = 1 ] || build
start_test_cluster "$SECRET" "$ADMIN" "$BUDGET"
GENERATION_BEFORE=$(redis-cli -p "$REDIS_PORT" get 'imd:{g}:generation')

start_cluster_chat "$BUDGET"
into_traffic "$RESTART_AFTER"
mark "redis SIG$SIGNAL"
KILLED_AT=$MARKED_AT
stop_redis "$SIGNAL"
echo "== redis stopped (SIG$SIGNAL) $(( $(date +%s%3N) - KILLED_AT )) ms after the signal" >&2
sleep "$DOWN"
restart_redis "$BUDGET"
mark "redis back"
BACK_AT=$MARKED_AT
echo "== redis back on port $REDIS_PORT (pid $REDIS_PID)" >&2

outcome() {
    local generation_after
    generation_after=$(redis-cli -p "$REDIS_PORT" get 'imd:{g}:generation')
    echo "  store generation: ${GENERATION_BEFORE} before, ${generation_after} after" \
        "($([ "$GENERATION_BEFORE" = "$generation_after" ] && echo unchanged || echo CHANGED))"
    echo "  refused sends $(json "$WORK/kill.json" .messages.refused)"
    delivered_around "$WORK/kill.json" "$KILLED_AT" "$BACK_AT"
    echo "  gw1: $(counters "$GW_URL" "${COUNTERS[@]}")"
    echo "  w1:  $(counters "$W1_URL" "${COUNTERS[@]}")"
    echo "  w2:  $(counters "$W2_URL" "${COUNTERS[@]}")"
    echo "  \"lost acknowledged state\" in the logs: $(cat "$WORK"/imd-*.err | grep -c 'lost acknowledged state' || true);" \
        "every node's warnings and errors (count, line):"
    log_lines 'WARN|ERROR' "$WORK"/imd-*.err
    echo "  processes: $(alive gw1 "$GW_PID" w1 "$W1_PID" w2 "$W2_PID")"
    case "$(alive gw1 "$GW_PID" w1 "$W1_PID" w2 "$W2_PID")" in
        *DEAD*) echo "FAILED: an imd process died" >&2; exit 1 ;;
    esac
    [ "$GENERATION_BEFORE" = "$generation_after" ] || { echo "FAILED: the store's generation changed" >&2; exit 1; }
}

finish_kill_run \
    "Redis SIG$SIGNAL and restart ${RESTART_AFTER}s into a verified chat across 2 workers at ${RATE} msg/s, ${CONNECTIONS} connections, ${DURATION}s (AOF ${AOF:-always}):" \
    "  redis down $(( BACK_AT - KILLED_AT )) ms (signal to PONG after the restart, ${DOWN} s of it on purpose)" \
    outcome
