#!/usr/bin/env bash
# Fuzzes the HTTP and admin APIs of a live imd against its own OpenAPI description
# (`GET /openapi.json`) with schemathesis: a bounded number of generated requests per
# operation (SCHEMATHESIS_EXAMPLES, 25 by default), through every phase (examples,
# coverage, fuzzing, stateful over the description's links), and fails on any 5xx and on
# any answer whose status, content type, headers or body the description does not allow.
#
# Two runs on one imd: the client API (`/v1/…`) with a client token, then the admin API
# and the node's own routes with the admin token. Not fuzzed: the admin conversation
# stream (`…/stream`), server-sent events that never end on their own, and the
# WebSocket (not in the description).
#
# It starts its own imd (the binary at IMD_BIN, target/debug/imd by default, which
# .ci/test builds first) on a free loopback port in a temporary data dir, and stops it
# by its PID on exit. It installs schemathesis with pip when it is missing, at the
# version this script was written against, in a virtual environment under target/.
# SCHEMATHESIS_SEED replays a run (each run prints its seed); SCHEMATHESIS_ARGS adds
# flags of `st run` (e.g. `--report har --report-dir /tmp/st`).
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5
IMD_BIN=$(realpath "${IMD_BIN:-target/debug/imd}")
config=$(realpath imd/tests/schemathesis.toml)
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-25}

# Its own virtual environment under target/, kept between runs: a fresh machine installs
# it once.
venv=target/schemathesis-$SCHEMATHESIS_VERSION
if [ ! -x "$venv/bin/st" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION"
fi
st=$(realpath "$venv/bin/st")

work=$(mktemp -d)
imd_pid=
stop() {
    if [ -n "$imd_pid" ]; then
        kill "$imd_pid" 2>/dev/null || true
        wait "$imd_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap stop EXIT

secrets=(--data-dir "$work/data" --token-secret fuzz-token-secret --admin-token fuzz-admin-token)
"$IMD_BIN" serve --listen 127.0.0.1:0 "${secrets[@]}" >"$work/stdout" 2>"$work/stderr" &
imd_pid=$!

# The ready line: {"event":"ready","listen":"127.0.0.1:PORT",…}.
addr=
for _ in $(seq 200); do
    addr=$(sed -n 's/.*"event":"ready".*"listen":"\([^"]*\)".*/\1/p' "$work/stdout" | head -n1)
    [ -n "$addr" ] && break
    kill -0 "$imd_pid" 2>/dev/null || { cat "$work/stderr" >&2; echo "imd exited before it was ready" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { cat "$work/stderr" >&2; echo "imd printed no ready line" >&2; exit 1; }
base="http://$addr"

client=$("$IMD_BIN" token "${secrets[@]}" --uid alice --device fuzz --platform web --role agent)
admin=fuzz-admin-token

# The ids of schemathesis.toml's dictionaries: a group, a shop, and a conversation of
# each kind with messages in it.
python3 - "$base" "$client" "$admin" <<'PY'
import json, sys, urllib.request

base, client, admin = sys.argv[1:]

def call(method, path, token, body):
    req = urllib.request.Request(
        base + path,
        method=method,
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as answer:
        answer.read()

call("PUT", "/admin/v1/groups/team/members", admin, {"members": ["alice", "bob"]})
call("PUT", "/admin/v1/shops/shop1/agents", admin, {"agents": ["bob"]})
for target in ({"to": "bob"}, {"conv": "g:team"}, {"shop": "shop1"}):
    for i in range(3):
        call("POST", "/v1/messages", client, dict(target, body={"text": f"seed {i}"}))
PY

fuzz() {
    local token=$1
    shift
    # Run from the work dir: schemathesis leaves nothing in the checkout.
    (cd "$work" && "$st" --config-file "$config" run "$base/openapi.json" --url "$base" \
        -H "Authorization: Bearer $token" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
        --max-examples "$EXAMPLES" \
        --generation-with-security-parameters false \
        --generation-database none \
        --request-timeout 10 \
        --no-color \
        ${SCHEMATHESIS_SEED:+--seed "$SCHEMATHESIS_SEED"} \
        ${SCHEMATHESIS_ARGS:-} \
        "$@")
}

status=0
echo "== schemathesis: the client API, as a client"
fuzz "$client" --include-path-regex '^/v1/' || status=1
echo "== schemathesis: the admin API and the node's routes, as the admin"
fuzz "$admin" --exclude-path-regex '^/v1/|/stream$' || status=1

if ! kill -0 "$imd_pid" 2>/dev/null; then
    echo "imd died during the fuzz" >&2
    status=1
fi
if [ "$status" != 0 ]; then
    echo "--- imd's log (last 50 lines)" >&2
    tail -n 50 "$work/stderr" >&2
fi
exit "$status"
