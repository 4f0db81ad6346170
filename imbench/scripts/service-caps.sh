#!/usr/bin/env bash
# Customer service with agent caps and a queue (issue 15). One imd node (embedded
# store; the per-ip upgrade limit off: start_imd passes --connect-rate 0), one shop of
# AGENTS agents capped at MAX_OPEN open conversations each (`--max-open`), CUSTOMERS
# customers writing RATE messages a second in total for DURATION seconds. Each agent
# answers a conversation's messages and closes it after CLOSE_AFTER replies
# (`--close-after`); the customer's next message opens it again. With more customers
# than AGENTS x MAX_OPEN, conversations wait in the shop's queue and drain as agents
# close theirs. The run is verified: every message reaches the agent its conversation
# was with (or went to after waiting), and every agent counts its own open
# conversations from its events; imbench fails the run if one was ever above the cap.
#
# Prints send -> push latency, the queue wait (the customer message that opened a
# waiting conversation -> its `assigned` event at the customer), the most open
# conversations of one agent, and the loss check; then stops everything it started
# (by PID). Bounded: about DURATION + 90 s after the build.
#
#   imbench/scripts/service-caps.sh        # 50 agents at cap 5, 1000 customers, 1000 msg/s, 20 s
#   SKIP_BUILD=1 RATE=500 CLOSE_AFTER=3 imbench/scripts/service-caps.sh
source "$(dirname "$0")/lib.sh"

AGENTS=${AGENTS:-50}
MAX_OPEN=${MAX_OPEN:-5}
CUSTOMERS=${CUSTOMERS:-1000}
RATE=${RATE:-1000}
DURATION=${DURATION:-20}
CLOSE_AFTER=${CLOSE_AFTER:-2}
SECRET="service-caps-$$"
ADMIN="$SECRET-admin"
CONNECTIONS=$(( AGENTS + CUSTOMERS ))
BUDGET=$(( DURATION + 90 ))

[ "${SKIP_BUILD:-0}" = 1 ] || build
IMD_ARGS=(--admin-token "$ADMIN")
start_imd "$SECRET" "$BUDGET"
IMD_ARGS=()

echo "== load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
r="$WORK/service-caps.json"
rc=0
timeout "$BUDGET" "$IMBENCH_BIN" run --target "$IMD_URL" --token-secret "$SECRET" \
    --admin-token "$ADMIN" --scenario service --connections "$CONNECTIONS" \
    --shop-size "$CONNECTIONS" --shop-agents "$AGENTS" --max-open "$MAX_OPEN" \
    --close-after "$CLOSE_AFTER" --rate "$RATE" --duration "${DURATION}s" --ramp 1000 \
    --verify --local-agents 1 --report "$r" || rc=$?
if [ ! -f "$r" ]; then
    echo "imbench wrote no report (exit $rc)" >&2
    exit 1
fi

echo
echo "service with caps: ${AGENTS} agents at max_open ${MAX_OPEN}, ${CUSTOMERS} customers, \
${RATE} customer msg/s for ${DURATION}s, close after ${CLOSE_AFTER} replies"
echo "  sent $(json "$r" .messages.sent) ($(json "$r" .throughput.sent_per_s)/s with the replies; \
ack p99 $(json "$r" .ack_latency_ms.p99) ms), \
delivered $(json "$r" .messages.delivered), lost $(json "$r" .messages.lost), \
duplicated $(json "$r" .messages.duplicated), waiting at end $(json "$r" .service.waiting_at_end)"
echo "  send -> push ms: p50 $(json "$r" .latency_ms.p50), p99 $(json "$r" .latency_ms.p99), \
p99.9 $(json "$r" .latency_ms.p999), max $(json "$r" .latency_ms.max) \
(n=$(json "$r" .latency_ms.count); without $(json "$r" .service.delivered_at_assignment) delivered with an assignment)"
echo "  queue wait ms: p50 $(json "$r" .service.queue_wait_ms.p50), p99 $(json "$r" .service.queue_wait_ms.p99), \
max $(json "$r" .service.queue_wait_ms.max) (n=$(json "$r" .service.queued)); \
max queue position $(json "$r" .service.max_queue_position)"
echo "  assignments $(json "$r" .service.assignments), closes $(json "$r" .service.closes) \
(failed $(json "$r" .service.close_errors); close call p50 $(json "$r" .service.close_ms.p50) ms, \
p99 $(json "$r" .service.close_ms.p99) ms), queue frames $(json "$r" .service.queue_frames), \
history given to agents $(json "$r" .service.history)"
echo "  max open per agent $(json "$r" .service.max_open_per_agent) (cap ${MAX_OPEN}; \
times over: $(json "$r" .service.over_cap))"
exit "$rc"
