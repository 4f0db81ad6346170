#!/usr/bin/env bash
# Cluster mode on one machine: redis-server, one gateway (gateway,dispatcher) and two
# workers, all on loopback. Measures
#
#   1. end-to-end latency of verified chat whose pairs are split across the two
#      workers (every message is committed in Redis by the sender's worker and pushed
#      over tarpc by the other), at each rate of RATES;
#   2. failover: how long after `kill -9` of a worker the gateway stops reaching it
#      (its RPC connection ends), and how long until it is out of the registry (its
#      TTL'd registration expires).
#
# Redis runs with AOF fsync on every write (AOF=always, the durability promise;
# AOF=everysec or AOF=no to compare). Bounded: about (DURATION + 40 s) per rate plus
# 30 s, after the build. Exits non-zero when a message was lost.
#
#   imbench/scripts/cluster.sh                        # 1000 and 2000 msg/s, 200 conns, 20 s
#   RATES="500 1000 4000" DURATION=30s imbench/scripts/cluster.sh
source "$(dirname "$0")/lib.sh"

RATES=${RATES:-1000 2000}
CONNECTIONS=${CONNECTIONS:-200}
DURATION=${DURATION:-20s}
AOF=${AOF:-always}
SECRET="cluster-$$"
ADMIN="cluster-admin-$$"
n_rates=$(wc -w <<<"$RATES")
BUDGET=$(( (${DURATION%s} + 40) * n_rates + 60 ))

[ "${SKIP_BUILD:-0}" = 1 ] || build
start_test_cluster "$SECRET" "$ADMIN" "$BUDGET"

rc=0
for rate in $RATES; do
    timeout $(( ${DURATION%s} + 40 )) "$IMBENCH_BIN" run --target "$W1_URL" --target "$W2_URL" \
        --spread --token-secret "$SECRET" --scenario chat --connections "$CONNECTIONS" \
        --rate "$rate" --duration "$DURATION" --verify --report "$WORK/chat-$rate.json" || rc=$?
    echo "cluster chat across workers, ${rate} msg/s, ${CONNECTIONS} connections, ${DURATION}, AOF ${AOF}: \
p50 $(json "$WORK/chat-$rate.json" .latency_ms.p50) ms, \
p90 $(json "$WORK/chat-$rate.json" .latency_ms.p90) ms, \
p99 $(json "$WORK/chat-$rate.json" .latency_ms.p99) ms, \
p99.9 $(json "$WORK/chat-$rate.json" .latency_ms.p999) ms, \
max $(json "$WORK/chat-$rate.json" .latency_ms.max) ms; \
lost $(json "$WORK/chat-$rate.json" .messages.lost), delivered $(json "$WORK/chat-$rate.json" .messages.delivered)"
done

echo "== kill -9 w2 (pid $W2_PID)" >&2
killed=$(date +%s%N)
kill -KILL "$W2_PID"
wait "$W2_PID" 2>/dev/null || true
forget_pid "$W2_PID"
unreachable=""
for _ in $(seq 1 300); do
    if [ -z "$unreachable" ] && [ "$(cluster_nodes "$GW_URL" "$ADMIN")" = "gw1 w1" ]; then
        unreachable=$(date +%s%N)
    fi
    [ "$(cluster_nodes "$GW_URL" "$ADMIN" registered)" = "gw1 w1" ] && break
    sleep 0.05
done
gone=$(date +%s%N)
echo "failover: w2 unreachable from the gateway $(( (${unreachable:-$gone} - killed) / 1000000 )) ms after kill -9, \
out of the registry after $(( (gone - killed) / 1000000 )) ms (now: $(cluster_nodes "$GW_URL" "$ADMIN" registered))"
exit "$rc"
