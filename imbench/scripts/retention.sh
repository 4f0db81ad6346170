#!/usr/bin/env bash
# Retention under chat traffic: the store stops growing once messages start to leave,
# and the background trim does not slow sends.
#
# For each store of STORES (embedded, redis: standalone Redis without persistence),
# twice on a fresh imd: with --retention RETENTION (1m, the shortest a release build
# takes: a pass every 6 s), then without. Each time, chat at RATE msg/s over
# CONNECTIONS connections for WARM s (unverified), then a verified run of MEASURE s
# whose latency (intended send → push) is printed: with retention, that run is when
# the trim removes as much as comes in. Every SAMPLE s a line shows the time, the
# store's size (the embedded store's data dir, or Redis used_memory, and its key
# count), imd's RSS and imd_retention_removed_total. Loopback only; stops everything it started (by PID).
# Bounded: about 2 × STORES × (WARM + MEASURE + 30) s after the build.
#
#   imbench/scripts/retention.sh                     # 500 msg/s, 200 connections, 120 s + 60 s
#   STORES=embedded WARM=60 MEASURE=30 imbench/scripts/retention.sh
source "$(dirname "$0")/lib.sh"

STORES=${STORES:-"embedded redis"}
RATE=${RATE:-500}
CONNECTIONS=${CONNECTIONS:-200}
WARM=${WARM:-120}
MEASURE=${MEASURE:-60}
SAMPLE=${SAMPLE:-15}
RETENTION=${RETENTION:-1m}
SECRET="retention-$$"
BUDGET=$(( WARM + MEASURE + 60 ))

[ "${SKIP_BUILD:-0}" = 1 ] || build

# size STORE: the store's size in bytes.
size() {
    if [ "$1" = redis ]; then
        redis-cli -u "$REDIS_URL" info memory | awk -F: '/^used_memory:/ {print $2+0}'
    else
        du -sb "$WORK/data" | cut -f1
    fi
}

# keys STORE: Redis's key count (idempotency keys, which live 24 h, are most of what
# grows with retention on); "-" for the embedded store.
keys() {
    if [ "$1" = redis ]; then redis-cli -u "$REDIS_URL" dbsize; else echo -; fi
}

# mib BYTES: in MiB, one decimal.
mib() { awk -v b="${1:-0}" 'BEGIN {printf "%.1f", b / 1048576}'; }

# removed: imd_retention_removed_total of the running imd.
removed() {
    curl -s "$IMD_URL/metrics" | awk '$1 == "imd_retention_removed_total" {print $2 + 0}'
}

# sample STORE LABEL: one line every SAMPLE s until imd is gone.
sample() {
    local t0=$SECONDS
    local rss
    while kill -0 "$IMD_PID" 2>/dev/null; do
        rss=$(rss_kb "$IMD_PID")
        printf '%-8s %-9s t=%4ds  store %s MiB  keys %s  rss %s MiB  removed %s\n' \
            "$1" "$2" $(( SECONDS - t0 )) "$(mib "$(size "$1")")" "$(keys "$1")" \
            "$(mib "$(( ${rss:-0} * 1024 ))")" "$(removed)" || true
        sleep "$SAMPLE"
    done
}

# latency FILE: p50/p99/p99.9/max and the loss check of a report.
latency() {
    echo "p50 $(json "$1" .latency_ms.p50) ms, p99 $(json "$1" .latency_ms.p99) ms," \
        "p99.9 $(json "$1" .latency_ms.p999) ms, max $(json "$1" .latency_ms.max) ms;" \
        "lost $(json "$1" .messages.lost), delivered $(json "$1" .messages.delivered)"
}

rc=0
SUMMARY=()
for store in $STORES; do
    for label in retention none; do
        IMD_ARGS=()
        if [ "$store" = redis ]; then
            start_redis "$BUDGET"
            IMD_ARGS+=(--redis "$REDIS_URL" --admin-token "admin-$SECRET")
        fi
        [ "$label" = retention ] && IMD_ARGS+=(--retention "$RETENTION")
        rm -rf "$WORK/data"
        start_imd "$SECRET" "$BUDGET"
        sample "$store" "$label" &
        SAMPLER=$!
        PIDS+=("$SAMPLER")
        timeout "$BUDGET" "$IMBENCH_BIN" run --target "$IMD_URL" --token-secret "$SECRET" \
            --scenario chat --connections "$CONNECTIONS" --rate "$RATE" --duration "${WARM}s" \
            --local-agents 1 >"$WORK/warm.out" 2>"$WORK/warm.err" || rc=$?
        timeout "$BUDGET" "$IMBENCH_BIN" run --target "$IMD_URL" --token-secret "$SECRET" \
            --scenario chat --connections "$CONNECTIONS" --rate "$RATE" --duration "${MEASURE}s" \
            --verify --local-agents 1 --report "$WORK/measure.json" \
            >"$WORK/measure.out" 2>"$WORK/measure.err" || rc=$?
        line="$store, $label: store $(mib "$(size "$store")") MiB at the end, removed $(removed); last ${MEASURE}s: $(latency "$WORK/measure.json")"
        echo "== $line"
        SUMMARY+=("$line")
        kill -TERM "$IMD_PID" 2>/dev/null || true
        wait "$IMD_PID" 2>/dev/null || true
        forget_pid "$IMD_PID"
        wait "$SAMPLER" 2>/dev/null || true
        forget_pid "$SAMPLER"
        if [ "$store" = redis ]; then
            kill -TERM "$REDIS_PID" 2>/dev/null || true
            wait "$REDIS_PID" 2>/dev/null || true
            forget_pid "$REDIS_PID"
        fi
    done
done

echo
echo "chat ${RATE} msg/s, ${CONNECTIONS} connections, ${WARM}s then ${MEASURE}s measured, retention ${RETENTION}:"
printf '  %s\n' "${SUMMARY[@]}"
exit "$rc"
