#!/usr/bin/env bash
# The conversation list over HTTP, as an app's first screen reads it: a user with
# CONVS conversations (each with a message from its peer, every other one with a
# reply), then SAMPLES sequential `GET /v1/conversations?limit=L` on one keep-alive
# connection, for L = 50 and 200, from the newest and from the middle of the list.
# Once on the embedded store, once on a standalone Redis (REDIS=0 skips it). Prints
# p50, p99 and max per case, then stops everything it started (by PID). The sends go
# over HTTP with --send-rate 0 (start_imd), 4 connections at a time. Bounded: about
# 2 × (CONVS / 1000 × 5 s + 60 s) after the build.
#
#   imbench/scripts/conversation-list.sh              # 10,000 conversations
#   CONVS=1000 REDIS=0 imbench/scripts/conversation-list.sh
source "$(dirname "$0")/lib.sh"

CONVS=${CONVS:-10000}
SAMPLES=${SAMPLES:-200}
SECRET="conversation-list-$$"
BUDGET=$(( CONVS / 1000 * 5 + 120 ))

[ "${SKIP_BUILD:-0}" = 1 ] || build

# measure NAME: fills the node at $IMD_URL and times the list reads.
measure() {
    local token
    token=$("$IMD_BIN" token --uid me --device d --platform web --ttl 1h --token-secret "$SECRET")
    timeout "$BUDGET" python3 - "$1" "$IMD_URL" "$SECRET" "$CONVS" "$SAMPLES" "$token" "$IMD_BIN" <<'PY'
import http.client, json, subprocess, sys, threading, time, urllib.parse

name, url, secret, convs, samples, me, imd = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
host = urllib.parse.urlparse(url).netloc

def token(uid):
    return subprocess.check_output([imd, "token", "--uid", uid, "--device", "d", "--platform", "web",
                                    "--ttl", "1h", "--token-secret", secret], text=True).strip()

def post(conn, tok, body):
    conn.request("POST", "/v1/messages", json.dumps(body), {"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
    r = conn.getresponse(); r.read()
    assert r.status == 200, r.status

# The peers' tokens are minted by a few processes at once: imd token is quick but not free.
peers = [f"p{i:05}" for i in range(convs)]
def fill(part):
    conn = http.client.HTTPConnection(host)
    for i in part:
        p = peers[i]
        post(conn, token(p), {"to": "me", "body": {"text": "is this in stock?"}})
        if i % 2 == 0:
            post(conn, me, {"to": p, "body": {"text": "yes, two left"}})
t = time.time()
threads = [threading.Thread(target=fill, args=(range(k, convs, 4),)) for k in range(4)]
for th in threads: th.start()
for th in threads: th.join()
print(f"{name}: filled {convs} conversations in {time.time() - t:.0f} s", file=sys.stderr)

conn = http.client.HTTPConnection(host)
def get(path):
    t = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": "Bearer " + me})
    r = conn.getresponse(); body = r.read()
    assert r.status == 200, (r.status, body[:200])
    return time.perf_counter() - t, json.loads(body)
_, first = get("/v1/conversations?limit=100")
middle = None
path = "/v1/conversations?limit=200"
for _ in range(convs // 400):
    _, page = get(path)
    middle = page.get("next")
    path = "/v1/conversations?limit=200&before=" + urllib.parse.quote(middle)
for limit in (50, 200):
    for where, extra in (("newest", ""), ("middle", "&before=" + urllib.parse.quote(middle))):
        times = sorted(get(f"/v1/conversations?limit={limit}{extra}")[0] * 1000 for _ in range(samples))
        p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
        print(f"{name}: limit {limit}, {where}: p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, max {times[-1]:.2f} ms ({samples} requests)")
PY
}

start_imd "$SECRET" "$BUDGET"
measure embedded
kill -TERM "$IMD_PID" 2>/dev/null || true
if [ "${REDIS:-1}" = 1 ]; then
    start_redis "$BUDGET"
    IMD_ARGS=(--redis "$REDIS_URL" --admin-token "$SECRET-admin")
    start_imd "$SECRET" "$BUDGET" 127.0.0.1:0 "$WORK/data-redis"
    measure redis
fi
