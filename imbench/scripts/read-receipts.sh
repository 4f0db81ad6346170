#!/usr/bin/env bash
# The cost of read receipts under chat load. One imd node (embedded store; the
# per-ip upgrade limit off: start_imd passes --connect-rate 0), then verified chat at
# RATE msg/s over CONNECTIONS connections for DURATION, ROUNDS times each way,
# alternating: without read receipts, then with `--read-receipts` (every client marks
# each message it receives from someone else read, so the load carries one `read`
# frame, one read-position commit and one `read` notice to both members per message).
# Prints send-to-push latency of each run, then stops everything it started (by PID).
# Bounded: about ROUNDS * 2 * (DURATION + 60) s after the build.
#
#   imbench/scripts/read-receipts.sh                        # 2000 msg/s, 200 conns, 2 rounds
#   RATE=1000 ROUNDS=1 imbench/scripts/read-receipts.sh
source "$(dirname "$0")/lib.sh"

RATE=${RATE:-2000}
CONNECTIONS=${CONNECTIONS:-200}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
SECRET="read-receipts-$$"
BUDGET=$(( ROUNDS * 2 * (DURATION + 60) + 60 ))

[ "${SKIP_BUILD:-0}" = 1 ] || build

# chat NAME [FLAGS…]: one verified chat run; prints one line.
chat() {
    local name=$1 j="$WORK/$1.json"
    shift
    timeout $(( DURATION + 60 )) "$IMBENCH_BIN" run --target "$IMD_URL" --token-secret "$SECRET" \
        --scenario chat --connections "$CONNECTIONS" --rate "$RATE" --duration "${DURATION}s" \
        --verify --local-agents 1 --report "$j" "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    echo "$name: ${RATE} msg/s over ${CONNECTIONS} connections, ${DURATION}s: \
p50 $(json "$j" .latency_ms.p50) ms, p90 $(json "$j" .latency_ms.p90) ms, \
p99 $(json "$j" .latency_ms.p99) ms, p99.9 $(json "$j" .latency_ms.p999) ms, \
max $(json "$j" .latency_ms.max) ms; lost $(json "$j" .messages.lost), delivered $(json "$j" .messages.delivered), \
read receipts $(json "$j" .messages.reads)"
    grep -q '"errors": *\[\]' "$j" || { echo "$name: errors in $j:" >&2; grep -A3 '"errors"' "$j" >&2; }
}

rc=0
start_imd "$SECRET" "$BUDGET"
for round in $(seq 1 "$ROUNDS"); do
    chat "plain-$round"
    chat "receipts-$round" --read-receipts
done
exit "$rc"
