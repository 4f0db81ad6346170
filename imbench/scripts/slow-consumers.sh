#!/usr/bin/env bash
# Memory under a flood to devices that never read. SILENT devices upgrade their
# WebSocket and then read nothing (nor answer pings); 4 HTTP senders post each of
# them PER messages of 16 KiB. Twice, on a fresh imd each time: with the defaults
# (--max-outbox-bytes 8 MiB, --write-timeout 10s), then with both bounds out of the
# way (1 GiB, 1h), which is what a count-only bound amounts to. Prints imd's peak RSS
# (VmHWM) over its RSS before the flood, how many devices were cut off as slow, and
# how long the flood took. Stops everything it started (by PID). Bounded: about
# 2 × (SILENT × PER / 500 s + 60 s) after the build.
#
#   imbench/scripts/slow-consumers.sh                 # 10 silent devices × 768 × 16 KiB
#   SILENT=4 PER=256 imbench/scripts/slow-consumers.sh
source "$(dirname "$0")/lib.sh"

SILENT=${SILENT:-10}
PER=${PER:-768}
BOUND=${BOUND:-8388608}
SECRET="slow-consumers-$$"
BUDGET=$(( SILENT * PER / 500 + 120 ))

[ "${SKIP_BUILD:-0}" = 1 ] || build

# kb PID FIELD: a /proc/PID/status field in KiB.
kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }

# flood NAME: the silent devices, then the flood, against $IMD_URL.
flood() {
    local name=$1 rss0 hwm
    rss0=$(kb "$IMD_PID" VmRSS)
    timeout "$BUDGET" python3 - "$IMD_URL" "$SECRET" "$SILENT" "$PER" "$IMD_BIN" "$IMD_PID" <<'PY'
import http.client, json, socket, subprocess, sys, threading, time, urllib.parse

url, secret, silent, per, imd, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
host, port = urllib.parse.urlparse(url).hostname, urllib.parse.urlparse(url).port

def token(uid):
    return subprocess.check_output([imd, "token", "--uid", uid, "--device", "d", "--platform", "web",
                                    "--ttl", "1h", "--token-secret", secret], text=True).strip()

socks = []
for i in range(silent):
    s = socket.create_connection((host, port))
    s.sendall((f"GET /v1/ws?token={token(f'silent{i}')} HTTP/1.1\r\nHost: {host}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    socks.append(s)  # never read again

sender = token("sender")
pad = "x" * (16 * 1024)
def send(part):
    conn = http.client.HTTPConnection(host, port)
    for i in part:
        body = json.dumps({"to": f"silent{i % silent}", "body": {"i": i, "pad": pad}})
        conn.request("POST", "/v1/messages", body, {"Authorization": "Bearer " + sender})
        r = conn.getresponse(); r.read()
        assert r.status == 200, r.status
t = time.time()
threads = [threading.Thread(target=send, args=(range(k, silent * per, 4),)) for k in range(4)]
for th in threads: th.start()
for th in threads: th.join()
print(f"{silent * per} messages of 16 KiB ({silent * per // 64} MiB) in {time.time() - t:.1f} s", file=sys.stderr)
PY
    hwm=$(kb "$IMD_PID" VmHWM)
    local slow
    slow=$(curl -s "$IMD_URL/metrics" | awk '$1 == "imd_slow_consumer_disconnects_total" {print $2}')
    echo "$name: RSS before ${rss0} KiB, peak ${hwm} KiB (+$(( (hwm - rss0) / 1024 )) MiB); cut off as slow: ${slow:-0} of ${SILENT}"
}

IMD_ARGS=(--max-outbox-bytes "$BOUND" --write-timeout 10s)
start_imd "$SECRET" "$BUDGET"
flood "bound $BOUND"
kill -TERM "$IMD_PID" 2>/dev/null || true
IMD_ARGS=(--max-outbox-bytes 1073741824 --write-timeout 1h)
start_imd "$SECRET" "$BUDGET" 127.0.0.1:0 "$WORK/data-off"
flood bounds-off
