#!/usr/bin/env bash
# Packs what device-1m.sh needs on a box with no Rust toolchain and no Redis: stripped
# release imd and imbench, and redis-server with every shared library it loads and the
# dynamic loader, so that it runs whatever the box has installed.
#
#   imbench/scripts/device-pack.sh DIR       # then: BIN=DIR imbench/scripts/device-1m.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${1:?usage: device-pack.sh DIR}
mkdir -p "$DIR/redis"
(cd "$ROOT" && cargo build --release --locked -p imd -p imbench >&2)
strip -o "$DIR/imd" "$ROOT/target/release/imd"
strip -o "$DIR/imbench" "$ROOT/target/release/imbench"
REDIS=$(command -v redis-server) || { echo "redis-server is not installed here" >&2; exit 1; }
cp "$(readlink -f "$REDIS")" "$DIR/redis/redis-server"
# Every library ldd resolves, and the loader under the name device-1m.sh runs.
ldd "$REDIS" | awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | while read -r lib; do
    cp -L "$lib" "$DIR/redis/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$DIR/redis/ld-linux-x86-64.so.2"
du -sh "$DIR" "$DIR/redis" >&2
