#!/usr/bin/env bash
# What a retention pass costs the embedded store when nothing is due: it looks at the
# head of every conversation and every user. One user writes one message to each of
# N others (N direct conversations, N + 1 users); imd runs with --retention 1m and a
# pass every second (--retention-interval, the tests' hidden flag), and the passes of
# the next PASSES seconds are timed from imd_retention_pass_seconds. Stops imd (by
# PID). Bounded: about N / 1000 + PASSES + 30 s after the build.
#
#   imbench/scripts/retention-pass.sh                # N=20000
#   N=100000 imbench/scripts/retention-pass.sh
source "$(dirname "$0")/lib.sh"

N=${N:-20000}
PASSES=${PASSES:-12}
SECRET="retention-pass-$$"
BUDGET=$(( N / 500 + PASSES + 60 ))

[ "${SKIP_BUILD:-0}" = 1 ] || build
IMD_ARGS=(--retention 1m --retention-interval 1s)
start_imd "$SECRET" "$BUDGET"

TOKEN=$("$IMD_BIN" token --uid hub --device d --platform web --ttl 1h --token-secret "$SECRET")
timeout "$BUDGET" python3 - "$IMD_URL" "$TOKEN" "$N" <<'PY'
import http.client, json, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1]); token = sys.argv[2]; n = int(sys.argv[3])
c = http.client.HTTPConnection(u.hostname, u.port)
for i in range(n):
    c.request("POST", "/v1/messages", json.dumps({"to": f"u{i}", "body": {"i": i}}),
              {"Authorization": "Bearer " + token})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY

metric() { curl -s "$IMD_URL/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
s0=$(metric imd_retention_pass_seconds_sum); c0=$(metric imd_retention_pass_seconds_count)
sleep "$PASSES"
s1=$(metric imd_retention_pass_seconds_sum); c1=$(metric imd_retention_pass_seconds_count)
awk -v s0="$s0" -v s1="$s1" -v c0="$c0" -v c1="$c1" -v n="$N" 'BEGIN {
    p = (s1 - s0) / (c1 - c0)
    printf "%d conversations, %d users: %d passes, %.1f ms a pass, %.2f µs per conversation or user\n",
        n, n + 1, c1 - c0, p * 1000, p * 1e6 / (2 * n + 1)
}'
