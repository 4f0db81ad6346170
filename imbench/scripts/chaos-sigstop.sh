#!/usr/bin/env bash
# A worker frozen (SIGSTOP) for longer than its registration TTL under a verified chat
# across the cluster, then woken (SIGCONT): does it notice that the cluster moved on,
# and is anything lost or pushed twice?
#
# Starts redis-server (AOF fsync always), one gateway (gateway,dispatcher) and two
# workers, and runs verified chat with `imbench --spread` (the two ends of every pair
# on different workers). FREEZE_AFTER s into the traffic it sends SIGSTOP to worker w2
# and, FREEZE s later (default 10, the registration TTL is 3 s), SIGCONT. Meanwhile
# w2's registration expires, the gateway's dispatcher removes its routes, and w1's
# senders' messages to w2's users wait in the inboxes; w2's clients stay connected
# (the kernel keeps their sockets) and every pair has one end on w2, so deliveries stop
# everywhere. Woken, w2 must find its registration gone, register again, write its
# devices' routes again, and bring its devices what they missed from their inboxes.
#
# Prints lost (must be 0), duplicated, the stall (the first deliveries per second
# around the freeze, and the maximum latency; the longest time no device received
# anything stays short, as w1's senders keep getting their own messages' echoes), when
# w2 left the registry and how long after SIGCONT it was back in it, the device routes
# per node before the freeze and 2 s after SIGCONT, refused sends (requests w2 had in
# flight time out on waking), w2's warnings and log lines about its registration,
# gw1's cleanings and w2's re-registration in ms from SIGCONT, each node's counters
# (stale deliveries dropped, gap repairs, catch-up passes, dead routes) and whether
# every imd process is still up; stops everything it started (by PID). Exits non-zero when a message was lost or an
# imd process died, else with imbench's status. SIGSTOP, w2 leaving the registry,
# SIGCONT and w2's return are marked on the chart; REPORT=FILE.json keeps the report
# and FILE.html. Bounded: about DURATION + DRAIN + 90 s after the build (FREEZE_AFTER
# + FREEZE must end inside DURATION).
#
#   imbench/scripts/chaos-sigstop.sh                 # 1000 msg/s, 200 conns, 30 s, 10 s frozen
#   RATE=2000 FREEZE=15 imbench/scripts/chaos-sigstop.sh
#   FREEZE=2 imbench/scripts/chaos-sigstop.sh        # shorter than the TTL, to compare
source "$(dirname "$0")/lib.sh"

RATE=${RATE:-1000}
CONNECTIONS=${CONNECTIONS:-200}
DURATION=${DURATION:-30}
FREEZE_AFTER=${FREEZE_AFTER:-8}
FREEZE=${FREEZE:-10}
DRAIN=${DRAIN:-10}
SECRET="chaos-sigstop-$$"
ADMIN="chaos-sigstop-admin-$$"
BUDGET=$(( DURATION + DRAIN + 90 ))
[ $(( FREEZE_AFTER + FREEZE )) -lt "$DURATION" ] || { echo "FREEZE_AFTER + FREEZE must be under DURATION" >&2; exit 2; }
# What each node counts around a frozen worker.
COUNTERS=(imd_stale_deliveries_total imd_push_gaps_repaired_total imd_catch_up_requests_total
    imd_catch_up_passes_total imd_routing_dead_routes_total imd_rpc_push_failures_total
    imd_messages_duplicate_total imd_state_lost_kicks_total)

# w2_registered: whether the gateway's registry lists w2 with a live registration.
w2_registered() {
    case " $(cluster_nodes "$GW_URL" "$ADMIN" registered) " in
        *" w2 "*) return 0 ;;
        *) return 1 ;;
    esac
}

[ "${SKIP_BUILD:-0}" = 1 ] || build
start_test_cluster "$SECRET" "$ADMIN" "$BUDGET"

start_cluster_chat "$BUDGET"
into_traffic "$FREEZE_AFTER"
ROUTES_BEFORE=$(routes_per_node)
kill -STOP "$W2_PID"
mark "SIGSTOP w2"
KILLED_AT=$MARKED_AT
echo "== SIGSTOP worker w2 ($W2_PID) for ${FREEZE}s" >&2
GONE_AT=""
while [ $(( $(date +%s%3N) - KILLED_AT )) -lt $(( FREEZE * 1000 )) ]; do
    if [ -z "$GONE_AT" ] && ! w2_registered; then
        mark "w2 out of the registry"
        GONE_AT=$MARKED_AT
    fi
    sleep 0.05
done
kill -CONT "$W2_PID"
mark "SIGCONT w2"
CONT_AT=$MARKED_AT
echo "== SIGCONT worker w2" >&2
BACK_AT=""
for _ in $(seq 1 200); do
    if w2_registered; then
        mark "w2 registered again"
        BACK_AT=$MARKED_AT
        break
    fi
    sleep 0.05
done
# Every device is still connected where it was: w2's routes should all be back.
sleep 2
ROUTES_AFTER=$(routes_per_node)

outcome() {
    delivered_around "$WORK/kill.json" "$KILLED_AT" "$CONT_AT"
    echo "  device routes per node 2 s after w2 came back: ${ROUTES_AFTER}(before the freeze: ${ROUTES_BEFORE})"
    echo "  refused sends $(json "$WORK/kill.json" .messages.refused)"
    echo "  gw1: $(counters "$GW_URL" "${COUNTERS[@]}")"
    echo "  w1:  $(counters "$W1_URL" "${COUNTERS[@]}")"
    echo "  w2:  $(counters "$W2_URL" "${COUNTERS[@]}")"
    echo "  w2's warnings and errors, and what it logged about the registry (count, line):"
    log_lines 'WARN|ERROR|regist|routes' "$WORK/imd-w2.err"
    echo "  the registry around the freeze, ms from SIGCONT (gw1's cleanings, w2's return):"
    log_times 'dead node cleaned' "$CONT_AT" "$WORK/imd-gw1.err"
    log_times 'registration had expired|routes written again' "$CONT_AT" "$WORK/imd-w2.err"
    echo "  processes: $(alive gw1 "$GW_PID" w1 "$W1_PID" w2 "$W2_PID")"
    case "$(alive gw1 "$GW_PID" w1 "$W1_PID" w2 "$W2_PID")" in
        *DEAD*) echo "FAILED: an imd process died" >&2; exit 1 ;;
    esac
}

GONE="never while frozen"
[ -z "$GONE_AT" ] || GONE="$(( GONE_AT - KILLED_AT )) ms after SIGSTOP"
BACK="not within 10 s of SIGCONT"
[ -z "$BACK_AT" ] || BACK="$(( BACK_AT - CONT_AT )) ms after SIGCONT"
finish_kill_run \
    "SIGSTOP of worker w2 for ${FREEZE}s, ${FREEZE_AFTER}s into a verified chat across 2 workers at ${RATE} msg/s, ${CONNECTIONS} connections, ${DURATION}s:" \
    "  w2 out of the registry ${GONE}; registered again ${BACK}" \
    outcome
