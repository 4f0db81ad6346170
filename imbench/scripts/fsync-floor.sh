#!/usr/bin/env bash
# The floor under a durable commit on this machine: how long one fdatasync of a small
# append takes, in the directory imd's data would live in. Appends N records of BYTES
# bytes to a fresh file, each followed by fdatasync (what a commit of one small batch
# costs at least, whatever the engine), and prints the percentiles. A send's `sent`
# waits for one such sync, so its p99 cannot be below this one's.
#
#   imbench/scripts/fsync-floor.sh                      # 2,000 × 512 B in $TMPDIR
#   DIR=/var/lib/imd N=5000 BYTES=4096 imbench/scripts/fsync-floor.sh
set -euo pipefail

DIR=${DIR:-${TMPDIR:-/tmp}}
N=${N:-2000}
BYTES=${BYTES:-512}
command -v python3 >/dev/null || { echo "python3 is missing" >&2; exit 1; }
FILE=$(mktemp "$DIR/fsync-floor.XXXXXX")
trap 'rm -f "$FILE"' EXIT

python3 - "$FILE" "$N" "$BYTES" <<'EOF'
import os, sys, time
path, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
record = b"x" * size
took = []
for _ in range(n):
    t = time.perf_counter_ns()
    os.write(fd, record)
    os.fdatasync(fd)
    took.append(time.perf_counter_ns() - t)
os.close(fd)
took.sort()
pick = lambda q: took[min(len(took) - 1, int(q * len(took)))] / 1000
print(f"fdatasync after a {size} B append, {n} times in {os.path.dirname(path)}: "
      f"p50 {pick(0.5):.0f} µs, p90 {pick(0.9):.0f} µs, p99 {pick(0.99):.0f} µs, "
      f"p99.9 {pick(0.999):.0f} µs, max {took[-1] / 1000:.0f} µs")
EOF
