#!/usr/bin/env bash
# cluster/netns-test.sh: ferry cluster tests across real network boundaries.
#
# Usage: cluster/netns-test.sh [--build] [SCENARIO...]     (as root)
#        cluster/netns-test.sh --list
#
# Builds a small network of Linux network namespaces: one namespace holding a
# bridge, and three hosts a, b and c (10.231.77.1, .2, .3 on a /24), each
# joined to the bridge by a veth pair. One `ferry node` runs in each host
# namespace (QUIC on HOST:7000, REST API on HOST:8000); the script drives them
# with the ferry CLI and curl run inside the namespaces. Scenarios (default:
# all, in this order):
#
#   plain            push and pull 3 MiB files between every ordered pair
#   firewall         b drops new UDP from a: a push a->b and a pull by a from b
#                    still complete, through reverse connect via c
#   both-blocked     a and b drop each other's UDP: a push a->b ends InError
#                    and its error names the direct dial and the reverse connect
#   node-loss        b is killed (SIGKILL) during a 64 MiB push; a marks b
#                    unavailable, keeps its requests queued, and both complete,
#                    resumed, once b is back
#   submit-anywhere  a push from b to c submitted on a's API (--from b);
#                    a, b and c report the same final status for it
#
# Each scenario prints `== scenario: NAME`, then `PASS` or `FAIL: reasons`
# (and on failure the tail of the node logs); the script exits 1 if any
# scenario failed.
#
#   --build   run `cargo build` first (by default the existing binary is used,
#             built only if missing)
#
# Environment:
#   FERRY_BIN=PATH           the ferry binary (default target/debug/ferry); it
#                            is copied once, so a rebuild during the run does
#                            not change it
#   FERRY_NETNS_SUBNET=X.Y.Z the /24 to use (default 10.231.77)
#   FERRY_NETNS_KEEP=1       keep the work folder (configs, stores, node logs)
#
# Needs root. Installs what is missing with apt-get: iproute2, nftables,
# conntrack, iputils-ping, curl, jq. Everything it creates (namespaces
# fyPID-*, node processes, the mktemp work folder) is removed on exit, also on
# failure or Ctrl-C; no traffic leaves the namespaces.

set -Eeuo pipefail

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; }

ALL_SCENARIOS=(plain firewall both-blocked node-loss submit-anywhere)
NODES=(a b c)

# --- arguments ----------------------------------------------------------------

BUILD=0
SELECTED=()
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        --list) printf '%s\n' "${ALL_SCENARIOS[@]}"; exit 0 ;;
        --build) BUILD=1 ;;
        -*) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
        *)
            if [[ " ${ALL_SCENARIOS[*]} " != *" $arg "* ]]; then
                echo "unknown scenario $arg; scenarios: ${ALL_SCENARIOS[*]}" >&2
                exit 2
            fi
            SELECTED+=("$arg")
            ;;
    esac
done
[[ ${#SELECTED[@]} -gt 0 ]] || SELECTED=("${ALL_SCENARIOS[@]}")

if [[ $(id -u) -ne 0 ]]; then
    echo "cluster/netns-test.sh needs root (network namespaces, nftables)" >&2
    exit 1
fi

# FERRY_BIN may be relative to the caller's folder: resolve it before the cd.
if [[ -n ${FERRY_BIN:-} ]]; then
    FERRY_BIN=$(realpath -m -- "$FERRY_BIN")
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

SUBNET=${FERRY_NETNS_SUBNET:-10.231.77}
PREFIX="fy$$-"
declare -A IP=([a]="$SUBNET.1" [b]="$SUBNET.2" [c]="$SUBNET.3")
QUIC_PORT=7000
API_PORT=8000

# --- tools ----------------------------------------------------------------------

install_missing() {
    local -A pkg_of=([ip]=iproute2 [tc]=iproute2 [nft]=nftables [conntrack]=conntrack
        [ping]=iputils-ping [curl]=curl [jq]=jq [timeout]=coreutils [realpath]=coreutils)
    local missing=() tool
    for tool in "${!pkg_of[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg_of[$tool]}")
    done
    [[ ${#missing[@]} -gt 0 ]] || return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "== installing ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || { echo "apt-get not found; install ${missing[*]} by hand" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
install_missing

if command -v b3sum >/dev/null 2>&1; then
    hash_of() { b3sum --no-names "$1"; }
else
    hash_of() { sha256sum "$1" | cut -d' ' -f1; }
fi

# --- work folder and cleanup ------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-netns.XXXXXX")
CREATED_NS=()
declare -A PID=()

cleanup() {
    local rc=$?
    set +e
    trap - ERR INT TERM
    # Node processes first (SIGTERM, then SIGKILL after a bounded wait)...
    local n pid waited=0
    for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null; done
    while ((waited < 50)); do
        local alive=0
        for n in "${!PID[@]}"; do kill -0 "${PID[$n]}" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
        waited=$((waited + 1))
    done
    for n in "${!PID[@]}"; do kill -KILL "${PID[$n]}" 2>/dev/null; done
    # ...then anything else still running in our namespaces, then the namespaces.
    local ns
    for ns in "${CREATED_NS[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    done
    for ns in "${CREATED_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [[ ${FERRY_NETNS_KEEP:-0} == 1 ]]; then
        echo "work folder kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "netns-test.sh: line $LINENO: \`$BASH_COMMAND\` failed (exit $?)" >&2' ERR

# --- the binary ---------------------------------------------------------------------

BIN_SRC=${FERRY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/ferry}
if ((BUILD)) || [[ ! -x $BIN_SRC ]]; then
    if [[ -n ${FERRY_BIN:-} ]]; then
        [[ -x $BIN_SRC ]] || { echo "FERRY_BIN=$FERRY_BIN is not an executable file" >&2; exit 1; }
    else
        echo "== cargo build"
        cargo build
    fi
fi
mkdir -p "$WORK/bin"
cp "$BIN_SRC" "$WORK/bin/ferry"
BIN=$WORK/bin/ferry

# --- helpers -------------------------------------------------------------------------

now_ms() {
    local t=${EPOCHREALTIME//[.,]/}
    echo $((t / 1000))
}
secs() { printf '%d.%02d' $(($1 / 1000)) $(($1 % 1000 / 10)); } # ms -> "S.CC"
ns() { echo "$PREFIX$1"; }
in_ns() {
    local n=$1
    shift
    ip netns exec "$(ns "$n")" "$@"
}
api_url() { echo "https://${IP[$1]}:$API_PORT"; }
# The node's first admin token (it writes it to its data folder at start).
token_file() { echo "$WORK/$1/data/admin.token"; }

# cli NODE SUBCOMMAND ARGS...: the ferry CLI against NODE's API, inside NODE's
# namespace, for at most $CLI_TIMEOUT seconds (60). --foreground keeps it in
# the script's process group, so a Ctrl-C reaches it.
cli() {
    local n=$1 sub=$2
    shift 2
    in_ns "$n" timeout --foreground "${CLI_TIMEOUT:-60}" "$BIN" "$sub" --api "$(api_url "$n")" \
        --ca "$WORK/certs/ca.pem" --token-file "$(token_file "$n")" "$@"
}

# api NODE METHOD PATH [JSON]: one REST call; prints the body (also of an
# error answer) and fails on an HTTP error.
api() {
    local n=$1 method=$2 path=$3
    local args=(-sS --max-time 5 --fail-with-body -X "$method" --cacert "$WORK/certs/ca.pem")
    args+=(-H "authorization: Bearer $(cat "$(token_file "$n")" 2>/dev/null)")
    [[ $# -ge 4 ]] && args+=(-H 'content-type: application/json' -d "$4")
    in_ns "$n" curl "${args[@]}" "$(api_url "$n")$path"
}

# field_of NODE ID JQ_FILTER: the filter applied to NODE's record of ID, or
# "?" if the record cannot be read.
field_of() {
    local body
    body=$(api "$1" GET "/api/v1/transfers/$2" 2>/dev/null) || { echo "?"; return 0; }
    jq -r "$3" <<<"$body" 2>/dev/null || echo "?"
}

# status_of NODE ID: the status of NODE's record ("?" if unreadable).
status_of() { field_of "$1" "$2" '.status // "?"'; }

# error_of NODE ID: "STATUS CODE: MESSAGE" of NODE's record.
error_of() { field_of "$1" "$2" '"\(.status) \(.error.code // "-"): \(.error.message // "no error recorded")"'; }

# wait_final NODE ID SECS: polls NODE's record until Done, InError or
# Cancelled; prints the last status seen; fails if SECS passed first.
wait_final() {
    local n=$1 id=$2 deadline=$(($(now_ms) + $3 * 1000)) st
    while :; do
        st=$(status_of "$n" "$id")
        case "$st" in Done | InError | Cancelled) echo "$st"; return 0 ;; esac
        (($(now_ms) < deadline)) || { echo "$st"; return 1; }
        sleep 0.25
    done
}

random_file() { head -c "$2" /dev/urandom >"$1"; } # random_file PATH SIZE (e.g. 3M)

# --- network --------------------------------------------------------------------------

setup_network() {
    echo "== network: namespaces ${PREFIX}{br,a,b,c}, bridge br0, hosts on $SUBNET.0/24"
    local br n
    br=$(ns br)
    ip netns add "$br"
    CREATED_NS+=("$br")
    ip -n "$br" link set lo up
    ip -n "$br" link add br0 type bridge
    ip -n "$br" link set br0 up
    for n in "${NODES[@]}"; do
        ip netns add "$(ns "$n")"
        CREATED_NS+=("$(ns "$n")")
        ip -n "$(ns "$n")" link set lo up
        # The pair is made inside the bridge namespace; its far end goes straight into the host's.
        ip -n "$br" link add "veth-$n" type veth peer name eth0 netns "$(ns "$n")"
        ip -n "$br" link set "veth-$n" master br0 up
        ip -n "$(ns "$n")" addr add "${IP[$n]}/24" dev eth0
        ip -n "$(ns "$n")" link set eth0 up
    done
    local from to ok deadline
    for from in "${NODES[@]}"; do
        for to in "${NODES[@]}"; do
            [[ $from != "$to" ]] || continue
            # The first pings may be lost while the bridge learns its ports.
            ok=0
            deadline=$(($(now_ms) + 10000))
            while (($(now_ms) < deadline)); do
                if in_ns "$from" ping -c 1 -W 1 -q "${IP[$to]}" >/dev/null 2>&1; then ok=1; break; fi
                sleep 0.2
            done
            ((ok)) || { echo "no ping from $from to $to (${IP[$to]})" >&2; exit 1; }
        done
    done
    echo "   ping: every host reaches the two others"
}

# nft_block HOST FROM: HOST drops new inbound UDP from FROM (replies to HOST's
# own dials still pass).
nft_block() {
    in_ns "$1" nft -f - <<EOF
table inet ferrytest {
    chain input {
        type filter hook input priority 0; policy accept;
        ct state established,related accept
        ip saddr ${IP[$2]} meta l4proto udp counter drop
    }
}
EOF
}

# nft_block_all HOST FROM: HOST drops every inbound UDP packet from FROM.
# Used where both sides block each other: both nodes dial from the same UDP
# port they accept on, so with the "new only" rule above a's own failed dial
# to b leaves a conntrack entry that lets b's dial back in as a "reply"
# (UDP hole punching), and nothing would be blocked.
nft_block_all() {
    in_ns "$1" nft -f - <<EOF
table inet ferrytest {
    chain input {
        type filter hook input priority 0; policy accept;
        ip saddr ${IP[$2]} meta l4proto udp counter drop
    }
}
EOF
}

nft_unblock() { in_ns "$1" nft delete table inet ferrytest 2>/dev/null || true; }

# nft_dropped HOST: packets HOST's ferrytest table has dropped so far.
nft_dropped() {
    in_ns "$1" nft -j list table inet ferrytest 2>/dev/null |
        jq '[.nftables[] | .rule? | select(.) | .expr[] | .counter? | select(.) | .packets] | add // 0' 2>/dev/null ||
        echo 0
}

# Forget tracked flows, so that a new rule applies to every packet from now on.
conntrack_flush() { in_ns "$1" conntrack -F >/dev/null 2>&1 || true; }

# --- nodes ------------------------------------------------------------------------------

setup_nodes() {
    echo "== certificates and configs in $WORK"
    # Each certificate carries its node's address: the API is HTTPS there.
    "$BIN" certs init --dir "$WORK/certs" --nodes a --ip "${IP[a]}" >/dev/null
    "$BIN" certs add --dir "$WORK/certs" b --ip "${IP[b]}" >/dev/null
    "$BIN" certs add --dir "$WORK/certs" c --ip "${IP[c]}" >/dev/null
    local n
    for n in "${NODES[@]}"; do
        mkdir -p "$WORK/$n/data" "$WORK/$n/out" "$WORK/$n/in"
        : >"$WORK/$n.log"
        write_config "$n"
    done
}

# write_config NODE [PARTNER_WAIT_SECS]
write_config() {
    local n=$1 wait=${2:-8} p
    {
        cat <<EOF
node_id = "$n"
listen = "${IP[$n]}:$QUIC_PORT"
api = "${IP[$n]}:$API_PORT"
data_dir = "$n/data"
restart_interval_bytes = 4194304
connect_timeout_ms = 1500

[retry]
attempts = 20
initial_delay_ms = 200
max_delay_ms = 1000

[cluster]
heartbeat_ms = 500
heartbeat_timeout_ms = 2000
probe_interval_ms = 1000
partner_wait_secs = $wait
reverse_connect_timeout_ms = 3000

[tls]
cert = "certs/$n.pem"
key = "certs/$n.key"
ca = "certs/ca.pem"
EOF
        for p in "${NODES[@]}"; do
            [[ $p != "$n" ]] || continue
            printf '\n[[partners]]\nid = "%s"\naddress = "%s:%s"\n' "$p" "${IP[$p]}" "$QUIC_PORT"
        done
        cat <<EOF

[[rules]]
name = "default"
send_dir = "$n/out"
recv_dir = "$n/in"
partners = ["*"]
EOF
    } >"$WORK/$n.toml"
}

running() { [[ -n ${PID[$1]:-} ]] && kill -0 "${PID[$1]}" 2>/dev/null; }

# start_node NODE: starts it in its namespace and waits (bounded) for its API.
start_node() {
    local n=$1
    echo "--- $(date -u +%T.%3N) netns-test: starting node $n" >>"$WORK/$n.log"
    RUST_LOG=${RUST_LOG:-info} ip netns exec "$(ns "$n")" "$BIN" node --config "$WORK/$n.toml" >>"$WORK/$n.log" 2>&1 &
    PID[$n]=$!
    # Out of the job table: bash neither waits for it nor reports its death
    # ("Killed") when the node-loss scenario kills it; it is still reaped.
    disown "${PID[$n]}"
    local deadline=$(($(now_ms) + 20000))
    until api "$n" GET /api/v1/node >/dev/null 2>&1; do
        if ! running "$n"; then
            echo "node $n exited during start-up; its log ends:" >&2
            tail -n 20 "$WORK/$n.log" | sed 's/^/    /' >&2
            return 1
        fi
        if (($(now_ms) > deadline)); then
            echo "node $n: API $(api_url "$n") not answering after 20 s" >&2
            return 1
        fi
        sleep 0.1
    done
}

# stop_node NODE [SIGNAL]: SIGTERM (clean shutdown, bounded wait) or SIGKILL.
stop_node() {
    local n=$1 sig=${2:-TERM} pid=${PID[$1]:-}
    [[ -n $pid ]] || return 0
    kill -"$sig" "$pid" 2>/dev/null || true
    local deadline=$(($(now_ms) + 10000))
    while kill -0 "$pid" 2>/dev/null && (($(now_ms) < deadline)); do sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$(($(now_ms) + 5000))
        while kill -0 "$pid" 2>/dev/null && (($(now_ms) < deadline)); do sleep 0.05; done
    fi
    unset 'PID[$n]'
    echo "--- $(date -u +%T.%3N) netns-test: node $n stopped (SIG$sig)" >>"$WORK/$n.log"
}

ensure_running() {
    local n
    for n in "$@"; do running "$n" || start_node "$n"; done
}

# --- scenario bookkeeping ---------------------------------------------------------------

PASSED=()
FAILED=()
REASONS=()
declare -A LOGMARK=()

begin() {
    echo
    echo "== scenario: $1"
    SCENARIO=$1
    REASONS=()
    local n
    for n in "${NODES[@]}"; do LOGMARK[$n]=$(wc -l <"$WORK/$n.log"); done
}

fail() {
    REASONS+=("$1")
    echo "   check failed: $1"
}

finish() {
    if [[ ${#REASONS[@]} -eq 0 ]]; then
        echo "PASS"
        PASSED+=("$SCENARIO")
        return 0
    fi
    local joined n
    joined=$(printf '%s; ' "${REASONS[@]}")
    echo "FAIL: ${joined%; }"
    FAILED+=("$SCENARIO")
    for n in "${NODES[@]}"; do
        echo "   --- $n.log during this scenario (last 25 lines)"
        tail -n +"$((LOGMARK[$n] + 1))" "$WORK/$n.log" | tail -n 25 | sed 's/^/   | /'
    done
}

# transfer NODE send|get PARTNER FILE [ARGS...]: `ferry VERB --api NODE
# PARTNER default FILE --wait`; sets T_ID, T_RC, T_MS (wall time from submit
# to the end), T_ERR (the CLI's error line).
transfer() {
    local n=$1 verb=$2 partner=$3 file=$4 out t0
    shift 4
    T_RC=0
    t0=$(now_ms)
    out=$(cli "$n" "$verb" "$partner" default "$file" --wait "$@" 2>"$WORK/cli.err") || T_RC=$?
    T_MS=$(($(now_ms) - t0))
    T_ID=$(head -n 1 <<<"$out")
    [[ $T_ID =~ ^[0-9a-f]{32}$ ]] || T_ID=""
    # The CLI's own message ("error: ..."), else its last line.
    T_ERR=$(grep -m 1 '^error' "$WORK/cli.err" || grep -v '^[0-9a-f]\{32\}: ' "$WORK/cli.err" | tail -n 1 || true)
    ((T_RC != 124)) || T_ERR="not final after ${CLI_TIMEOUT:-60} s"
}

# same FILE_A FILE_B LABEL: checks that both exist with the same content;
# sets SAME=1 if so (a difference is recorded with fail).
same() {
    SAME=0
    if [[ ! -f $2 ]]; then
        fail "$3: ${2#"$WORK"/} is missing"
    elif [[ $(hash_of "$1") != "$(hash_of "$2")" ]]; then
        fail "$3: ${2#"$WORK"/} differs from ${1#"$WORK"/}"
    else
        SAME=1
    fi
}

# give_up NODE ID: cancels a request left unfinished, so it does not run on
# into the next scenario.
give_up() {
    [[ -n $2 ]] || return 0
    case "$(status_of "$1" "$2")" in
        Done | InError | Cancelled | "?") ;;
        *) CLI_TIMEOUT=15 cli "$1" cancel "$2" >/dev/null 2>&1 || true ;;
    esac
}

# warm_up: connections a<->c and c<->b (small pushes), so c can relay a's
# dial-back request to b.
warm_up() {
    local ok=0 from_to from to f
    for from_to in a:c c:b; do
        from=${from_to%:*} to=${from_to#*:}
        f="warm-$from$to-$(now_ms).bin"
        random_file "$WORK/$from/out/$f" 1K
        CLI_TIMEOUT=20 transfer "$from" send "$to" "$f"
        if ((T_RC != 0)); then
            fail "warm-up push $from->$to failed: $T_ERR"
            ok=1
        fi
    done
    return $ok
}

# --- scenarios ---------------------------------------------------------------------------

# One plain transfer: NODE runs VERB (send|get) with PARTNER on a fresh 3 MiB
# file that lives in FROM's out folder and must arrive in TO's in folder.
# Sets SAME to 1 when it arrived identical.
plain_one() {
    local node=$1 verb=$2 partner=$3 from=$4 to=$5 what=$6
    local f="plain-$verb-$node$partner.bin"
    SAME=0
    random_file "$WORK/$from/out/$f" 3M
    transfer "$node" "$verb" "$partner" "$f"
    if ((T_RC == 0)); then
        same "$WORK/$from/out/$f" "$WORK/$to/in/$f" "$what"
        echo "   $what 3 MiB: $(secs "$T_MS") s"
    else
        fail "$what ($T_ID): $T_ERR"
        give_up "$node" "$T_ID"
    fi
}

scenario_plain() {
    begin plain
    ensure_running a b c
    local x y n=0
    for x in "${NODES[@]}"; do
        for y in "${NODES[@]}"; do
            [[ $x != "$y" ]] || continue
            plain_one "$x" send "$y" "$x" "$y" "push $x->$y"
            n=$((n + SAME))
            plain_one "$x" get "$y" "$y" "$x" "pull by $x from $y"
            n=$((n + SAME))
        done
    done
    echo "   $n of 12 transfers verified"
    finish
}

# One reverse-connect transfer (push or pull) on fresh nodes a and b, with b
# dropping new UDP from a; sets R_MS.
reverse_transfer() {
    local verb=$1 what=$2 f=$3 dropped
    R_MS=""
    stop_node a
    stop_node b
    nft_unblock b
    conntrack_flush a
    conntrack_flush b
    nft_block b a
    ensure_running c
    start_node a
    start_node b
    warm_up || return 0
    CLI_TIMEOUT=20 transfer a "$verb" b "$f"
    local id=$T_ID
    if ((T_RC != 0)); then
        fail "$what ($id) did not complete: $T_ERR [a's record: $(error_of a "$id")]"
        give_up a "$id"
    else
        R_MS=$T_MS
        if [[ $verb == send ]]; then
            same "$WORK/a/out/$f" "$WORK/b/in/$f" "$what"
        else
            same "$WORK/b/out/$f" "$WORK/a/in/$f" "$what"
        fi
        echo "   $what: Done in $(secs "$T_MS") s"
    fi
    if [[ -n $id ]]; then
        if CLI_TIMEOUT=10 cli a log "$id" >"$WORK/joblog" 2>&1; then
            if grep -qi 'reverse connect' "$WORK/joblog"; then
                echo "   a's job log: $(grep -i 'reverse connect' "$WORK/joblog" | head -n 1 | cut -c1-160)"
            else
                fail "$what: a's job log of $id does not mention 'reverse connect'"
                sed 's/^/     | /' "$WORK/joblog" | tail -n 8
            fi
        else
            fail "$what: ferry log $id on a failed: $(tail -n 1 "$WORK/joblog")"
        fi
    fi
    dropped=$(nft_dropped b)
    echo "   b's firewall dropped $dropped UDP packets from a"
    ((dropped > 0)) || fail "$what: b's firewall dropped nothing from a (the direct dial was never blocked)"
}

scenario_firewall() {
    begin firewall
    ensure_running c
    # The baseline: the same size between a and c, unblocked, on a fresh a.
    stop_node a
    start_node a
    local base_f base_ms=""
    base_f="fw-base-$(now_ms).bin"
    random_file "$WORK/a/out/$base_f" 3M
    CLI_TIMEOUT=30 transfer a send c "$base_f"
    if ((T_RC == 0)); then
        base_ms=$T_MS
        echo "   baseline push a->c (fresh a, direct): $(secs "$base_ms") s"
    else
        fail "baseline push a->c: $T_ERR"
    fi

    local push_f="fw-push.bin" pull_f="fw-pull.bin" push_ms pull_ms
    random_file "$WORK/a/out/$push_f" 3M
    random_file "$WORK/b/out/$pull_f" 3M
    reverse_transfer send "push a->b" "$push_f"
    push_ms=$R_MS
    reverse_transfer get "pull by a from b" "$pull_f"
    pull_ms=$R_MS
    nft_unblock b
    conntrack_flush b

    local label ms
    for label in push pull; do
        [[ $label == push ]] && ms=$push_ms || ms=$pull_ms
        [[ -n $ms ]] || continue
        if [[ -n $base_ms ]]; then
            echo "   reverse connect kick-in ($label): $(secs "$ms") s from submit to Done, $(secs $((ms > base_ms ? ms - base_ms : 0))) s more than the direct push"
        else
            echo "   reverse connect kick-in ($label): $(secs "$ms") s from submit to Done"
        fi
    done
    finish
}

scenario_both_blocked() {
    begin both-blocked
    stop_node a
    stop_node b
    nft_unblock a
    nft_unblock b
    conntrack_flush a
    conntrack_flush b
    nft_block_all b a
    nft_block_all a b
    ensure_running c
    start_node a
    start_node b
    if warm_up; then
        local f="blocked.bin" id out t0 st rc=0 ms msg
        random_file "$WORK/a/out/$f" 1M
        t0=$(now_ms)
        out=$(CLI_TIMEOUT=20 cli a send b default "$f" 2>&1) || rc=$?
        id=$(head -n 1 <<<"$out")
        if ((rc != 0)) || ! [[ $id =~ ^[0-9a-f]{32}$ ]]; then
            fail "submit push a->b: $out"
        else
            st=$(wait_final a "$id" 60) || true
            ms=$(($(now_ms) - t0))
            msg=$(error_of a "$id")
            echo "   push a->b after $(secs "$ms") s: $msg"
            if [[ $st != InError ]]; then
                fail "push a->b is $st after $(secs "$ms") s, expected InError"
            else
                grep -qi 'reverse connect' <<<"$msg" ||
                    fail "the error does not mention the reverse connect: $msg"
                grep -Eqi 'direct|dial' <<<"${msg//[Rr]everse connect/}" ||
                    fail "the error does not mention the direct dial: $msg"
            fi
            give_up a "$id"
        fi
        echo "   dropped: by b from a $(nft_dropped b) packets (direct dials), by a from b $(nft_dropped a) (dial-backs)"
        (($(nft_dropped a) > 0)) || fail "no dial-back from b ever reached a's firewall"
    fi
    nft_unblock a
    nft_unblock b
    conntrack_flush a
    conntrack_flush b
    finish
}

scenario_node_loss() {
    begin node-loss
    ensure_running b c
    # a waits up to 120 s for an unavailable partner here.
    stop_node a
    write_config a 120
    start_node a
    # About 20 MB/s out of a, so the 64 MiB push is still running when b is killed.
    local shaped=0
    if in_ns a tc qdisc add dev eth0 root tbf rate 160mbit burst 256kb latency 200ms 2>/dev/null; then
        shaped=1
    else
        echo "   (tc tbf unavailable: a's link is not slowed down)"
    fi

    local big="loss-big.bin" small="loss-small.bin" id1 id2 out rc=0 t0 ms got=0 deadline
    random_file "$WORK/a/out/$big" 64M
    random_file "$WORK/a/out/$small" 1M
    out=$(CLI_TIMEOUT=20 cli a send b default "$big" 2>&1) || rc=$?
    id1=$(head -n 1 <<<"$out")
    if ((rc != 0)) || ! [[ $id1 =~ ^[0-9a-f]{32}$ ]]; then
        fail "submit push a->b: $out"
        ((shaped)) && in_ns a tc qdisc del dev eth0 root 2>/dev/null
        stop_node a
        write_config a
        start_node a
        finish
        return 0
    fi
    # Kill b once it holds a durable restart point of at least 8 MiB.
    deadline=$(($(now_ms) + 20000))
    while (($(now_ms) < deadline)); do
        got=$(field_of b "$id1" '.restart_offset_durable // 0')
        [[ $got =~ ^[0-9]+$ ]] || got=0
        ((got >= 8388608)) && break
        sleep 0.1
    done
    echo "   b holds a restart point at $((got / 1048576)) MiB of 64 MiB: SIGKILL b"
    stop_node b KILL
    t0=$(now_ms)
    ((shaped)) && in_ns a tc qdisc del dev eth0 root 2>/dev/null
    [[ $(status_of a "$id1") != Done ]] || fail "the push was Done before b was killed (too fast to test)"

    # a must see b unavailable (heartbeat_timeout_ms 2000).
    local body state=""
    deadline=$(($(now_ms) + 10000))
    while (($(now_ms) < deadline)); do
        if body=$(api a GET /api/v1/partners 2>&1); then
            state=$(jq -r '.partners[]? | select(.id == "b") | .state' <<<"$body" 2>/dev/null || true)
            [[ $state == unavailable ]] && break
        else
            state="GET /api/v1/partners failed: $(tr -d '\n' <<<"$body" | cut -c1-200)"
            break
        fi
        sleep 0.2
    done
    ms=$(($(now_ms) - t0))
    if [[ $state == unavailable ]]; then
        echo "   a reports b unavailable $(secs "$ms") s after the kill"
    else
        fail "a does not report b unavailable (${state:-no answer} after $(secs "$ms") s)"
    fi

    # One more request to b while it is down: it must wait, not fail.
    rc=0
    out=$(CLI_TIMEOUT=20 cli a send b default "$small" 2>&1) || rc=$?
    id2=$(head -n 1 <<<"$out")
    if ((rc != 0)) || ! [[ $id2 =~ ^[0-9a-f]{32}$ ]]; then
        fail "submit a second push a->b while b is down: $out"
        id2=""
    fi
    local seen1="" seen2="" s
    for _ in 1 2 3 4 5 6; do
        s=$(status_of a "$id1")
        [[ " $seen1 " == *" $s "* ]] || seen1="$seen1 $s"
        if [[ -n $id2 ]]; then
            s=$(status_of a "$id2")
            [[ " $seen2 " == *" $s "* ]] || seen2="$seen2 $s"
        fi
        sleep 0.5
    done
    echo "   while b is down, a's statuses: first request:$seen1; second request:${seen2:- -}"
    [[ $seen1 =~ (InError|Cancelled|Done|\?) ]] && fail "first request while b is down:$seen1"
    [[ -z $id2 || ! $seen2 =~ (InError|Cancelled|Done|\?) ]] || fail "second request while b is down:$seen2"
    [[ $seen2 =~ (Running) ]] && echo "   (note: the second request ran dials while b was down)"

    # b comes back: both complete, the first one resumed.
    start_node b
    t0=$(now_ms)
    local st1 st2="Done"
    st1=$(wait_final a "$id1" 60) || true
    ms=$(($(now_ms) - t0))
    [[ -z $id2 ]] || st2=$(wait_final a "$id2" 30) || true
    if [[ $st1 == Done ]]; then
        echo "   first request Done $(secs "$ms") s after b's restart"
        same "$WORK/a/out/$big" "$WORK/b/in/$big" "first push a->b"
    else
        fail "first request ended $st1: $(error_of a "$id1")"
    fi
    if [[ -n $id2 ]]; then
        if [[ $st2 == Done ]]; then
            same "$WORK/a/out/$small" "$WORK/b/in/$small" "second push a->b"
        else
            fail "second request ended $st2: $(error_of a "$id2")"
        fi
    fi
    local offset
    offset=$(field_of a "$id1" '.restart_offset // 0')
    { CLI_TIMEOUT=10 cli a log "$id1" && CLI_TIMEOUT=10 cli b log "$id1"; } >"$WORK/joblog" 2>&1 || true
    if grep -qi 'resum' "$WORK/joblog"; then
        echo "   resumed (restart_offset $offset): $(grep -i 'resum' "$WORK/joblog" | head -n 1 | cut -c1-160)"
    else
        fail "the job logs of $id1 on a and b do not mention a resume (restart_offset $offset)"
    fi
    give_up a "$id1"
    give_up a "$id2"

    # a back to its usual partner_wait_secs.
    stop_node a
    write_config a
    start_node a
    finish
}

scenario_submit_anywhere() {
    begin submit-anywhere
    ensure_running a b c
    local f id n body st
    f="anywhere-$(now_ms).bin"
    random_file "$WORK/b/out/$f" 2M
    transfer a send c "$f" --from b
    id=$T_ID
    if ((T_RC != 0)); then
        fail "ferry send --api a --from b c default $f --wait: ${T_ERR:-exit $T_RC}"
    else
        echo "   push b->c submitted on a: Done in $(secs "$T_MS") s"
        same "$WORK/b/out/$f" "$WORK/c/in/$f" "push b->c"
    fi
    if [[ -n $id ]]; then
        for n in "${NODES[@]}"; do
            if body=$(api "$n" GET "/api/v1/cluster/transfers/$id" 2>&1); then
                st=$(jq -r '.status // "?"' <<<"$body" 2>/dev/null || echo "?")
                echo "   $n's cluster view of $id: $st"
                [[ $st == Done ]] || fail "$n's cluster view says $st: $(tr -d '\n' <<<"$body" | cut -c1-200)"
            else
                fail "GET /api/v1/cluster/transfers/$id on $n: $(tr -d '\n' <<<"$body" | cut -c1-200)"
            fi
        done
    fi
    finish
}

# --- main ---------------------------------------------------------------------------------

echo "== ferry namespace tests: ${SELECTED[*]} (binary $BIN_SRC)"
setup_network
setup_nodes
for n in "${NODES[@]}"; do start_node "$n"; done
echo "== nodes a, b, c up (APIs on $(api_url a), $(api_url b), $(api_url c), each inside its namespace)"

for s in "${SELECTED[@]}"; do
    "scenario_${s//-/_}"
done

echo
echo "netns: ${#PASSED[@]} passed, ${#FAILED[@]} failed"
[[ ${#FAILED[@]} -eq 0 ]] || { echo "failed: ${FAILED[*]}"; exit 1; }
