#!/usr/bin/env bash
# cluster/lossy-bench.sh: ferry, scp and rsync over a link that drops packets.
#
# Usage: cluster/lossy-bench.sh            (as root)
#
# Two network namespaces a and b (10.231.78.1 and .2) joined by one veth
# pair; nftables in both drops each packet arriving on the veth at random with
# the loss rate under test, so both directions lose. For each controller (the
# nodes restart with it) and each loss rate it times, RUNS times, one after
# the other:
#
#   ferry-CC   a push of one SIZE_MIB file from a's node to b's, `ferry send
#              --wait` (verified, fsynced, delivered), once per congestion
#              controller CC in CONTROLLERS (the nodes restart with
#              `[transport] congestion = CC` for each; `CC:N` also sets
#              `loss_tolerance_percent = N`)
#   scp        scp -c aes128-gcm@openssh.com of the same file to a private
#              sshd in b (in the first controller's pass, after each ferry run)
#   rsync      rsync -a -e ssh (its default cipher) of the same file
#
# Under each ferry run it prints the sender's job-log line on the link (round
# trip, congestion window, MTU, packets lost and congestion events so far on
# the connection), and at the end a table of medians in MB/s (10^6 bytes per
# second), with each
# ferry controller's share of its own loss-free rate and its ratio to scp.
# Every copy is checked (size and BLAKE3) before it counts.
#
# This kernel has no netem, so the namespaces add loss but no latency (the
# round trip is tens of microseconds): the simulations cover latency
# (docs/SIMULATION.md, scenario lossy_slow).
#
# Environment:
#   FERRY_BIN=PATH     the ferry binary (default target/release/ferry, built if missing)
#   LOSSES="0 1 2 5"   loss rates in percent (decimals allowed); the first is the
#                      base of the "of its rate" column
#   CONTROLLERS="cubic newreno bbr cubic:5"
#   SIZE_MIB=256       the file's size
#   RUNS=3             runs per cell (the table shows medians)
#   TIMEOUT=300        seconds one copy may take before it counts as failed
#
# Installs what is missing with apt-get (iproute2, nftables, openssh-server,
# openssh-client, rsync, jq, b3sum). Removes its namespaces, processes and work
# folder on exit; no traffic leaves the namespaces.

set -Eeuo pipefail

[[ ${1:-} == -h || ${1:-} == --help ]] && { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0; }
[[ $(id -u) -eq 0 ]] || { echo "cluster/lossy-bench.sh needs root (namespaces, nftables, sshd)" >&2; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
read -r -a LOSSES <<<"${LOSSES:-0 1 2 5}"
read -r -a CONTROLLERS <<<"${CONTROLLERS:-cubic newreno bbr cubic:5}"
SIZE_MIB=${SIZE_MIB:-256}
RUNS=${RUNS:-3}
TIMEOUT=${TIMEOUT:-300}
BYTES=$((SIZE_MIB * 1024 * 1024))
declare -A IP=([a]=10.231.78.1 [b]=10.231.78.2)
PREFIX="fl$$-"

need=()
for t in ip:iproute2 nft:nftables sshd:openssh-server scp:openssh-client rsync:rsync jq:jq b3sum:b3sum; do
    command -v "${t%%:*}" >/dev/null 2>&1 || [[ -x /usr/sbin/${t%%:*} ]] || need+=("${t#*:}")
done
if [[ ${#need[@]} -gt 0 ]]; then
    echo "== installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
SSHD=/usr/sbin/sshd
[[ -x $SSHD ]] || SSHD=$(command -v sshd)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-lossy.XXXXXX")
declare -A PID=()
cleanup() {
    local rc=$? n pid
    set +e
    for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null; done
    sleep 0.5
    for n in a b; do
        for pid in $(ip netns pids "$PREFIX$n" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$PREFIX$n" 2>/dev/null
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

BIN_SRC=${FERRY_BIN:-$REPO/target/release/ferry}
[[ -x $BIN_SRC ]] || { echo "== cargo build --release"; cargo build --release; }
mkdir -p "$WORK/bin"
cp "$BIN_SRC" "$WORK/bin/ferry"
BIN=$WORK/bin/ferry

now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); }
in_ns() { local n=$1; shift; ip netns exec "$PREFIX$n" "$@"; }

# --- network: a <-veth-> b, loss set by nftables in both ------------------------------------

ip netns add "${PREFIX}a"
ip netns add "${PREFIX}b"
ip -n "${PREFIX}a" link add eth0 type veth peer name eth0 netns "${PREFIX}b"
for n in a b; do
    ip -n "$PREFIX$n" link set lo up
    ip -n "$PREFIX$n" addr add "${IP[$n]}/24" dev eth0
    ip -n "$PREFIX$n" link set eth0 up
done
in_ns a ping -c 1 -W 2 -q "${IP[b]}" >/dev/null || { echo "no ping from a to b" >&2; exit 1; }

# set_loss PERCENT: both namespaces drop that share of the packets arriving
# on the veth (not on loopback: each CLI talks to its own node's API there).
set_loss() {
    local per_million n
    per_million=$(awk -v p="$1" 'BEGIN { printf "%d", p * 10000 }')
    for n in a b; do
        in_ns "$n" nft delete table inet lossy 2>/dev/null || true
        ((per_million > 0)) || continue
        in_ns "$n" nft -f - <<EOF
table inet lossy {
    chain input {
        type filter hook input priority 0; policy accept;
        iifname "eth0" numgen random mod 1000000 < $per_million counter drop
    }
}
EOF
    done
}

# --- the file -----------------------------------------------------------------------------

mkdir -p "$WORK/a/out" "$WORK/a/in" "$WORK/a/data" "$WORK/b/out" "$WORK/b/in" "$WORK/b/data" "$WORK/b/ssh-in"
head -c "$BYTES" /dev/urandom >"$WORK/a/out/big.bin"
HASH=$(b3sum --no-names "$WORK/a/out/big.bin")

# check COPY: the copy is whole and identical, then removed.
check() {
    local size
    size=$(stat -c %s "$1" 2>/dev/null || echo missing)
    [[ $size == "$BYTES" ]] || { echo "$1: $size bytes, not $BYTES" >&2; return 1; }
    [[ $(b3sum --no-names "$1") == "$HASH" ]] || { echo "$1 differs from the source" >&2; return 1; }
    rm -f "$1"
}

mbs() { awk -v b="$BYTES" -v ms="$1" 'BEGIN { printf "%.1f", b / (ms / 1000) / 1e6 }'; }

# --- a private sshd in b --------------------------------------------------------------------

SSH_DIR=$WORK/ssh
mkdir -p "$SSH_DIR" /run/sshd
chmod 700 "$SSH_DIR"
ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/host" -C lossy-host
ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/client" -C lossy-client
cat >"$SSH_DIR/sshd_config" <<EOF
Port 22
ListenAddress ${IP[b]}
HostKey $SSH_DIR/host
PidFile $SSH_DIR/sshd.pid
AuthorizedKeysFile $SSH_DIR/client.pub
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
EOF
in_ns b "$SSHD" -f "$SSH_DIR/sshd_config" -E "$SSH_DIR/sshd.log"
SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR
    -i "$SSH_DIR/client")
for _ in $(seq 50); do in_ns a ssh "${SSH_OPTS[@]}" "root@${IP[b]}" true 2>/dev/null && break; sleep 0.1; done
in_ns a ssh "${SSH_OPTS[@]}" "root@${IP[b]}" true || { cat "$SSH_DIR/sshd.log" >&2; exit 1; }

time_scp() {
    local t0 t1
    t0=$(now_ms)
    in_ns a timeout "$TIMEOUT" scp -q -c aes128-gcm@openssh.com "${SSH_OPTS[@]}" "$WORK/a/out/big.bin" \
        "root@${IP[b]}:$WORK/b/ssh-in/big.bin" || return 1
    t1=$(now_ms)
    check "$WORK/b/ssh-in/big.bin" && echo $((t1 - t0))
}

time_rsync() {
    local t0 t1
    t0=$(now_ms)
    in_ns a timeout "$TIMEOUT" rsync -a -e "ssh ${SSH_OPTS[*]}" "$WORK/a/out/big.bin" \
        "root@${IP[b]}:$WORK/b/ssh-in/big.bin" || return 1
    t1=$(now_ms)
    check "$WORK/b/ssh-in/big.bin" && echo $((t1 - t0))
}

# --- ferry nodes -----------------------------------------------------------------------------

"$BIN" certs init --dir "$WORK/certs" --nodes a --ip "${IP[a]}" >/dev/null
"$BIN" certs add --dir "$WORK/certs" b --ip "${IP[b]}" >/dev/null

write_config() { # write_config NODE PARTNER CONTROLLER
    cat >"$WORK/$1.toml" <<EOF
node_id = "$1"
listen = "${IP[$1]}:7000"
api = "${IP[$1]}:8000"
data_dir = "$1/data"

[transport]
congestion = "${3%%:*}"
loss_tolerance_percent = $([[ $3 == *:* ]] && echo "${3#*:}" || echo 0)

[retry]
attempts = 50
initial_delay_ms = 200
max_delay_ms = 1000

[tls]
cert = "certs/$1.pem"
key = "certs/$1.key"
ca = "certs/ca.pem"

[[partners]]
id = "$2"
address = "${IP[$2]}:7000"

[[rules]]
name = "default"
send_dir = "$1/out"
recv_dir = "$1/in"
partners = ["*"]
EOF
}

cli() { # cli NODE ARGS...
    local n=$1
    shift
    in_ns "$n" timeout "$TIMEOUT" "$BIN" "$1" --api "https://${IP[$n]}:8000" --ca "$WORK/certs/ca.pem" \
        --token-file "$WORK/$n/data/admin.token" "${@:2}"
}

start_nodes() { # start_nodes CONTROLLER
    local n deadline
    write_config a b "$1"
    write_config b a "$1"
    for n in a b; do
        # Not through in_ns: `ip netns exec` runs the node in its own
        # process, so $! is the node (a function in the background would be
        # a subshell, and stopping it would leave the node running).
        ip netns exec "$PREFIX$n" "$BIN" node --config "$WORK/$n.toml" >>"$WORK/$n.log" 2>&1 &
        PID[$n]=$!
        disown "${PID[$n]}"
    done
    for n in a b; do
        deadline=$(($(now_ms) + 20000))
        until cli "$n" status >/dev/null 2>&1; do
            (($(now_ms) < deadline)) || { tail -n 20 "$WORK/$n.log" >&2; echo "node $n did not start" >&2; exit 1; }
            sleep 0.2
        done
    done
}

stop_nodes() {
    local n pid
    for n in a b; do
        [[ -n ${PID[$n]:-} ]] || continue
        kill -TERM "${PID[$n]}" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "${PID[$n]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${PID[$n]}" 2>/dev/null || true
        unset 'PID[$n]'
        # Nothing else may hold the node's ports when the next one starts.
        for pid in $(ip netns pids "$PREFIX$n" 2>/dev/null); do
            [[ $(cat "/proc/$pid/comm" 2>/dev/null) == ferry ]] && kill -KILL "$pid" 2>/dev/null
        done
    done
    sleep 0.5
}

time_ferry() {
    local t0 t1
    rm -f "$WORK/b/in/big.bin"
    : >"$WORK/link"
    t0=$(now_ms)
    local id ok=1
    cli a send b default big.bin --wait >"$WORK/send.out" 2>>"$WORK/ferry-errors.log" || ok=0
    t1=$(now_ms)
    id=$(grep -o '[0-9a-f]\{32\}' "$WORK/send.out" | head -n 1 || true)
    if ((!ok)); then
        # Not left running into the next runs.
        [[ -z $id ]] || cli a cancel "$id" >/dev/null 2>&1 || true
        return 1
    fi
    # The sender's job-log line on how the link carried the file.
    { [[ -n $id ]] && cli a log "$id" 2>/dev/null | grep -o 'link: .*' | tail -n 1; } >"$WORK/link" || : >"$WORK/link"
    check "$WORK/b/in/big.bin" && echo $((t1 - t0))
}

# --- the runs ---------------------------------------------------------------------------------

median() {
    [[ $# -gt 0 ]] || { echo -; return; }
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

declare -A MS=() # MS[tool,loss]="ms ms ms"
TOOLS=()
for cc in "${CONTROLLERS[@]}"; do TOOLS+=("ferry-$cc"); done
TOOLS+=(scp rsync)

echo "== $SIZE_MIB MiB, losses ${LOSSES[*]} %, $RUNS runs each, $(nproc) cores, $(date -u +%F)"
for cc in "${CONTROLLERS[@]}"; do
    start_nodes "$cc"
    for loss in "${LOSSES[@]}"; do
        set_loss "$loss"
        for run in $(seq "$RUNS"); do
            for tool in "ferry-$cc" scp rsync; do
                # scp and rsync run once per loss and run, in the first controller's pass.
                [[ $tool == ferry-* || $cc == "${CONTROLLERS[0]}" ]] || continue
                case $tool in
                    ferry-*) ms=$(time_ferry) || ms=fail ;;
                    scp) ms=$(time_scp) || ms=fail ;;
                    rsync) ms=$(time_rsync) || ms=fail ;;
                esac
                printf '   %-14s loss %4s %%  run %d: %s\n' "$tool" "$loss" "$run" \
                    "$([[ $ms == fail ]] && echo FAILED || echo "$(mbs "$ms") MB/s")"
                if [[ $tool == ferry-* && -s $WORK/link ]]; then echo "      $(cat "$WORK/link")"; fi
                [[ $ms == fail ]] || MS[$tool,$loss]+="$ms "
            done
        done
    done
    set_loss 0
    stop_nodes
done

# --- the table -----------------------------------------------------------------------------------

declare -A MED=()
printf '\n%-8s' "loss %"
for tool in "${TOOLS[@]}"; do printf '%16s' "$tool"; done
printf '   (MB/s, medians of %d)\n' "$RUNS"
for loss in "${LOSSES[@]}"; do
    printf '%-8s' "$loss"
    for tool in "${TOOLS[@]}"; do
        # shellcheck disable=SC2086
        m=$(median ${MS[$tool,$loss]:-})
        if [[ $m == - ]]; then MED[$tool,$loss]=-; else MED[$tool,$loss]=$(mbs "$m"); fi
        printf '%16s' "${MED[$tool,$loss]}"
    done
    printf '\n'
done
printf '\n%-8s%-14s%18s%14s\n' "loss %" controller "of its ${LOSSES[0]}% rate" "x scp"
for loss in "${LOSSES[@]}"; do
    for cc in "${CONTROLLERS[@]}"; do
        f=${MED[ferry-$cc,$loss]} base=${MED[ferry-$cc,${LOSSES[0]}]} s=${MED[scp,$loss]}
        share=$(awk -v f="$f" -v b="$base" 'BEGIN { if (f == "-" || b == "-" || b == 0) print "-"; else printf "%.0f %%", 100 * f / b }')
        ratio=$(awk -v f="$f" -v s="$s" 'BEGIN { if (f == "-" || s == "-" || s == 0) print "-"; else printf "%.2fx", f / s }')
        printf '%-8s%-14s%18s%14s\n' "$loss" "$cc" "$share" "$ratio"
    done
done
