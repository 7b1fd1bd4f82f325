#!/usr/bin/env bash
# cluster/fileset-memory.sh: one file set of many tiny files between two
# `ferry node` processes; prints the rate and each node's peak memory.
#
# Usage: cluster/fileset-memory.sh [FILES] [BYTES]
#   FILES  how many files (100000)
#   BYTES  size of each (0: empty files)
#
# Steps: `cargo build --release`; a two-node cluster on 127.0.0.1 with
# `ferry cluster up` in a temporary folder; FILES files in a's send folder
# under many/; `ferry send b default 'many/*' --wait`; the nodes' resident
# memory sampled every 0.2 s, and their peak (VmHWM) read at the end; every
# file checked present on b; the cluster stopped and the folder removed,
# also on failure or Ctrl-C. Prints figures; asserts only that the set
# ended Done with every file delivered.

set -euo pipefail

FILES=${1:-100000}
BYTES=${2:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
cargo build --release --quiet
FERRY=$REPO/target/release/ferry

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-setmem.XXXXXX")
CLUSTER=$WORK/cluster.toml
cd "$WORK" # `cluster up` writes the CLI's access files under ./.ferry/
cleanup() {
    "$FERRY" cluster down "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Free ports: QUIC and API bases picked from the PID so two runs do not collide.
BASE=$((20000 + ($$ % 2000) * 10))
cat >"$CLUSTER" <<EOF
name = "setmem"
nodes = ["a", "b"]
host = "127.0.0.1"
quic_base_port = $BASE
api_base_port = $((BASE + 5))
state_dir = "$WORK/state"
EOF
"$FERRY" cluster up "$CLUSTER" >/dev/null
A=$WORK/state/a
B=$WORK/state/b
API="--api https://127.0.0.1:$((BASE + 5))"

echo "== $FILES files of $BYTES bytes in a's send folder"
mkdir -p "$A/out/many"
python3 - "$A/out/many" "$FILES" "$BYTES" <<'EOF'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = b"x" * size
for i in range(n):
    with open(os.path.join(d, f"f{i:07d}"), "wb") as f:
        f.write(data)
EOF

pid_of() { cat "$1/data/ferry-node.pid"; }
PA=$(pid_of "$A")
PB=$(pid_of "$B")
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
echo "   before: a $(($(rss "$PA") / 1024)) MiB resident, b $(($(rss "$PB") / 1024)) MiB"

SAMPLES=$WORK/rss.txt
(
    while kill -0 "$PA" 2>/dev/null; do
        echo "$(rss "$PA") $(rss "$PB")" >>"$SAMPLES"
        sleep 0.2
    done
) &
SAMPLER=$!

echo "== ferry send b default 'many/*' --wait"
START=$(date +%s.%N)
# shellcheck disable=SC2086
"$FERRY" send $API b default 'many/*' --wait 2>&1 | tail -n 1
END=$(date +%s.%N)
kill "$SAMPLER" 2>/dev/null || true

GOT=$(find "$B/in/many" -type f | wc -l)
[[ $GOT == "$FILES" ]] || { echo "only $GOT of $FILES files arrived on b" >&2; exit 1; }
SECS=$(python3 -c "print(f'{$END - $START:.1f}')")
RATE=$(python3 -c "print(f'{$FILES / ($END - $START):.0f}')")
PEAK_A=$(($(hwm "$PA") / 1024))
PEAK_B=$(($(hwm "$PB") / 1024))
END_A=$(($(rss "$PA") / 1024))
END_B=$(($(rss "$PB") / 1024))
echo
echo "== $FILES files of $BYTES bytes as one file set, $(nproc) cores, $(date -u '+%Y-%m-%d')"
echo "   all $GOT files on b in $SECS s = $RATE files/s"
echo "   peak resident (VmHWM): a (sender, requester) $PEAK_A MiB, b (receiver) $PEAK_B MiB"
echo "   resident at the end: a $END_A MiB, b $END_B MiB"
# How a's and b's memory moved: at each tenth of the run.
python3 - "$SAMPLES" <<'EOF'
import sys
rows = [tuple(int(x) // 1024 for x in l.split()) for l in open(sys.argv[1]) if len(l.split()) == 2]
if rows:
    picks = [rows[min(len(rows) - 1, i * len(rows) // 10)] for i in range(11)]
    print("   resident MiB over the run (a, b), each tenth:", " ".join(f"{a}/{b}" for a, b in picks))
EOF
