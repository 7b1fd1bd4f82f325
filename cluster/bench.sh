#!/usr/bin/env bash
# cluster/bench.sh: ferry's throughput next to scp and rsync on the same machine.
#
# Usage: cluster/bench.sh [--record] [--rounds N] [ferry bench options...]
#
#   --record     also rewrite the section between <!-- bench:begin --> and
#                <!-- bench:end --> in docs/BENCHMARKS.md (or $FERRY_BENCH_DOC)
#   --rounds N   run every measurement N times, interleaved, and report
#                medians (default 3)
#   --record and --rounds come first, in either order; the rest is passed to
#   `ferry bench`, e.g. --big-mib 256 --small-count 500
#
# Steps: `cargo build --release`; if scp/rsync/ssh/sshd are there and we are
# root, a private sshd on 127.0.0.1 (port 2222, or the next free one); then
# N rounds, each in this order: `ferry bench --dir $WORK/round-R` (two nodes
# on loopback: a big push, many small files one request each, the same small
# files as one file set), then timed copies of that round's very same files:
# scp -c aes128-gcm, scp (default cipher) and rsync -e ssh of the big file,
# rsync -a -e ssh and scp -r of the small-file folder. Every copy is verified.
# Finally a summary of the medians with ferry's ratio to each tool, its
# bounds and CPU, and the targets.
#
# Environment:
#   FERRY_BENCH_INSTALL=1        if the ssh tools are missing and we are root,
#                                apt-get install openssh-server openssh-client rsync
#   FERRY_BENCH_SSH_PORT=N       first port to try for the private sshd (2222)
#   FERRY_BENCH_SCP_SMALL_TIMEOUT=S  give up on `scp -r` of the small files after S s (120)
#   FERRY_BENCH_NO_BUILD=1       skip `cargo build --release`; use target/release/ferry as it is
#   FERRY_BENCH_DOC=PATH         the file --record rewrites (docs/BENCHMARKS.md;
#                                relative to the repository unless absolute)
#
# Nothing leaves 127.0.0.1. The work folder (a mktemp -d) is removed on exit,
# and the private sshd is stopped, also on failure or Ctrl-C.

set -euo pipefail

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; }
die() { echo "bench.sh: $*" >&2; exit 1; }

RECORD=0
ROUNDS=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --record) RECORD=1; shift ;;
        --rounds)
            [[ $# -ge 2 ]] || die "--rounds needs a number"
            ROUNDS=$2
            shift 2
            ;;
        --rounds=*) ROUNDS=${1#*=}; shift ;;
        -h | --help) usage; echo "ferry bench options: target/release/ferry bench --help"; exit 0 ;;
        *) break ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds wants a whole number of at least 1, not '$ROUNDS'"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench.XXXXXX")
SSHD_PIDFILE=$WORK/ssh/sshd.pid
cleanup() {
    local rc=$?
    if [[ -s $SSHD_PIDFILE ]]; then
        local pid
        pid=$(<"$SSHD_PIDFILE")
        kill "$pid" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers ------------------------------------------------------------------

now() {
    if [[ -n ${EPOCHREALTIME:-} ]]; then
        printf '%s\n' "${EPOCHREALTIME/,/.}"
    else
        date +%s.%N
    fi
}

# timed CMD...: runs CMD (after an untimed sync), leaves its wall-clock
# seconds in ELAPSED and returns its exit status.
ELAPSED=0
timed() {
    local t0 t1 rc=0
    sync
    t0=$(now)
    "$@" || rc=$?
    t1=$(now)
    ELAPSED=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    return "$rc"
}

# calc EXPR [VARS...]: awk arithmetic, e.g. calc 'x/1e6/s' x=100 s=2
calc() {
    local expr=$1
    shift
    local args=()
    local kv
    for kv in "$@"; do args+=(-v "$kv"); done
    awk "${args[@]}" "BEGIN { print $expr }"
}
# fmt FORMAT VALUE: printf FORMAT VALUE, or "—" when VALUE is empty
fmt() {
    if [[ -z ${2:-} ]]; then
        printf '—'
    else
        awk -v f="$1" -v x="$2" 'BEGIN { printf f, x }'
    fi
}
# div A B: A / B, or nothing when either is missing or B is 0
div() { awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a != "" && b + 0 > 0) print a / b }'; }
# xfmt RATIO [PREFIX]: "1.43x", or "n/a" when RATIO is empty
xfmt() { if [[ -n ${1:-} ]]; then printf '%s%.2fx' "${2:-}" "$1"; else printf 'n/a'; fi; }

# median V...: the median of the values (for an even count the mean of the
# two middle ones); prints nothing when there are none.
median() {
    (($# > 0)) || return 0
    printf '%s\n' "$@" | sort -g | awk '
        { v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# The rounds' figures: V[KEY] is the values, space-separated, in round order;
# D[KEY] the same for display ("301, 288, 310"); UPPER[KEY]=1 when a value is
# only an upper bound (scp -r given up).
declare -A V=() D=() UPPER=()
add() { # add KEY VALUE FORMAT [upper]
    local shown
    shown=$(fmt "$3" "$2")
    if [[ ${4:-} == upper ]]; then
        shown="< $shown"
        UPPER[$1]=1
    fi
    V[$1]="${V[$1]:+${V[$1]} }$2"
    D[$1]="${D[$1]:+${D[$1]}, }$shown"
}
med() { # med KEY: the median of KEY's rounds
    local vals=()
    read -ra vals <<<"${V[$1]:-}"
    median "${vals[@]}"
}
rounds_of() { printf '%s' "${D[$1]:-—}"; }

# align_md FILE: pads the cells of the markdown tables in FILE so that the
# columns line up (right-aligned where the separator says so). Widths are
# counted in characters: awk runs on bytes and skips UTF-8 continuation bytes.
align_md() {
    LC_ALL=C awk '
        function width(s) { gsub(/[\200-\277]/, "", s); return length(s) }
        function rep(c, k,   s) { s = ""; while (k-- > 0) s = s c; return s }
        function flush(   i, j, c, pad, line) {
            for (i = 1; i <= n; i++) {
                line = "|"
                for (j = 1; j <= cols; j++) {
                    c = (j <= nc[i]) ? cell[i, j] : ""
                    if (i == sep) {
                        c = right[j] ? rep("-", w[j] - 1) ":" : rep("-", w[j])
                    } else {
                        pad = rep(" ", w[j] - width(c))
                        c = right[j] ? pad c : c pad
                    }
                    line = line " " c " |"
                }
                print line
            }
            n = 0; cols = 0; sep = 0
            split("", w); split("", right); split("", nc)
        }
        /^\|/ {
            n++
            k = split($0, f, "|")
            nc[n] = k - 2
            if (k - 2 > cols) cols = k - 2
            is_sep = 1
            for (j = 2; j < k; j++) {
                c = f[j]
                sub(/^ +/, "", c); sub(/ +$/, "", c)
                cell[n, j - 1] = c
                if (c !~ /^:?-+:?$/) is_sep = 0
            }
            if (is_sep && !sep) {
                sep = n
                for (j = 1; j <= nc[n]; j++) right[j] = (cell[n, j] ~ /:$/)
            } else {
                for (j = 1; j <= nc[n]; j++) if (width(cell[n, j]) > w[j]) w[j] = width(cell[n, j])
            }
            next
        }
        { if (n) flush(); print }
        END { if (n) flush() }
    ' "$1" >"$1.aligned"
    mv "$1.aligned" "$1"
}

# --- 1. build -------------------------------------------------------------------

FERRY=$REPO/target/release/ferry
if [[ ${FERRY_BENCH_NO_BUILD:-} == 1 ]]; then
    echo "== FERRY_BENCH_NO_BUILD=1: not building, using $FERRY"
else
    echo "== cargo build --release"
    cargo build --release
fi
[[ -x $FERRY ]] || die "$FERRY is missing"

# --- 2. disk space ----------------------------------------------------------------

# Disk space and deletions. Each round's folder keeps its small files and
# every small-file copy until the cleanup at exit: deleting thousands of
# files just before a timed step would slow that step's file creation (ext4
# skips recently deleted inodes when it allocates new ones, for 30 s or
# more, notably without a journal). Big files are deleted as soon as they
# are verified (a copy) or no longer needed (the round's big.bin and the one
# ferry delivered, at the end of the round): one inode each, and a round
# needs at most about 3x the big file at once. Warn below 4x plus a margin
# for the small files (6 copies a round, at least 4 KiB each) and ferry's
# stores.
big_mib=1024 small_count=2000 small_kib=4
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --big-mib) big_mib=${args[i + 1]:-$big_mib} ;;
        --big-mib=*) big_mib=${args[i]#*=} ;;
        --small-count) small_count=${args[i + 1]:-$small_count} ;;
        --small-count=*) small_count=${args[i]#*=} ;;
        --small-kib) small_kib=${args[i + 1]:-$small_kib} ;;
        --small-kib=*) small_kib=${args[i]#*=} ;;
    esac
done
need_mib=$(calc 'int(4 * b + 256 + r * 6 * n * (k > 4 ? k : 4) / 1024)' \
    b="$big_mib" r="$ROUNDS" n="$small_count" k="$small_kib" 2>/dev/null || echo 0)
free_mib=$(df -Pk "$WORK" | awk 'NR == 2 { print int($4 / 1024) }')
if [[ -n $free_mib && -n $need_mib ]] && ((free_mib < need_mib)); then
    echo "bench.sh: warning: $free_mib MiB free under $WORK; about $need_mib MiB wanted" \
        "(4x the $big_mib MiB big file, small files, stores)" >&2
fi

# --- 3. tools and a private sshd ----------------------------------------------------

SKIPPED=''
SSHD=''
find_sshd() {
    if [[ -x /usr/sbin/sshd ]]; then
        SSHD=/usr/sbin/sshd
    else
        SSHD=$(command -v sshd || true)
    fi
}
missing_tools() {
    local t out=()
    for t in scp rsync ssh ssh-keygen; do command -v "$t" >/dev/null || out+=("$t"); done
    find_sshd # in a $(...) subshell: the caller runs find_sshd again
    [[ -n $SSHD ]] || out+=(sshd)
    echo "${out[*]}"
}

MISSING=$(missing_tools)
if [[ -n $MISSING && $(id -u) -eq 0 && ${FERRY_BENCH_INSTALL:-} == 1 ]] && command -v apt-get >/dev/null; then
    echo "== installing openssh-server openssh-client rsync (missing: $MISSING)"
    echo "   note: the package may also start the system's sshd on port 22"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y openssh-server openssh-client rsync
    MISSING=$(missing_tools)
fi
if [[ -n $MISSING ]]; then
    SKIPPED="missing: $MISSING (as root, FERRY_BENCH_INSTALL=1 installs them with apt-get)"
elif [[ $(id -u) -ne 0 ]]; then
    SKIPPED="the private sshd runs as root and logs in as root; run this script as root"
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

DEFAULT_CIPHER=unknown
if [[ -z $SKIPPED ]]; then
    find_sshd
    SSH_DIR=$WORK/ssh
    mkdir -p "$SSH_DIR" /run/sshd
    chmod 700 "$SSH_DIR"
    PORT=${FERRY_BENCH_SSH_PORT:-2222}
    last=$((PORT + 40))
    while port_busy "$PORT"; do
        PORT=$((PORT + 1))
        ((PORT <= last)) || die "no free port for sshd in ${FERRY_BENCH_SSH_PORT:-2222}..$last"
    done
    ssh-keygen -q -t ed25519 -N '' -C ferry-bench-host -f "$SSH_DIR/host_ed25519"
    ssh-keygen -q -t ed25519 -N '' -C ferry-bench-client -f "$SSH_DIR/client_ed25519"
    cat >"$SSH_DIR/sshd_config" <<EOF
# private sshd of cluster/bench.sh; removed with its folder
Port $PORT
ListenAddress 127.0.0.1
HostKey $SSH_DIR/host_ed25519
PidFile $SSHD_PIDFILE
AuthorizedKeysFile $SSH_DIR/client_ed25519.pub
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
MaxStartups 100:30:200
Subsystem sftp internal-sftp
EOF
    "$SSHD" -t -f "$SSH_DIR/sshd_config" || die "sshd rejects $SSH_DIR/sshd_config"
    echo "== private sshd on 127.0.0.1:$PORT"
    "$SSHD" -f "$SSH_DIR/sshd_config" -E "$SSH_DIR/sshd.log"
    for _ in $(seq 100); do
        [[ -s $SSHD_PIDFILE ]] && port_busy "$PORT" && break
        sleep 0.05
    done
    port_busy "$PORT" || { cat "$SSH_DIR/sshd.log" >&2 || true; die "sshd did not start"; }

    SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes
        -o LogLevel=ERROR -i "$SSH_DIR/client_ed25519")
    SSH_CMD="ssh ${SSH_OPTS[*]} -p $PORT"
    SCP=(scp -q "${SSH_OPTS[@]}" -P "$PORT")
    HOST=root@127.0.0.1

    ssh "${SSH_OPTS[@]}" -p "$PORT" "$HOST" true ||
        { cat "$SSH_DIR/sshd.log" >&2 || true; die "cannot log in to the private sshd"; }
    DEFAULT_CIPHER=$(ssh -v "${SSH_OPTS[@]}" -o LogLevel=DEBUG1 -p "$PORT" "$HOST" true 2>&1 |
        sed -n 's/.*kex: client->server cipher: \([^ ]*\).*/\1/p' | head -n 1 || true)
    DEFAULT_CIPHER=${DEFAULT_CIPHER:-unknown}
fi

if command -v b3sum >/dev/null; then
    HASH=(b3sum --no-names)
elif command -v sha256sum >/dev/null; then
    HASH=(sha256sum)
else
    HASH=()
fi
hash_of() { "${HASH[@]}" "$1" | cut -d' ' -f1; }

# The round's files, set by each round.
RDIR='' BIG_SRC='' BIG_HASH='' DEST='' SMALL_SRC='' SMALL_COUNT=0 SMALL_BYTES=0

verify_big() { # verify_big COPY
    local copy=$1 size
    [[ -f $copy ]] || die "$copy is missing"
    size=$(stat -c %s "$copy")
    [[ $size == "$BIG_BYTES" ]] || die "$copy has $size bytes, not $BIG_BYTES"
    if [[ -n $BIG_HASH ]]; then
        [[ $(hash_of "$copy") == "$BIG_HASH" ]] || die "$copy: ${HASH[0]} differs"
    else
        cmp -s "$BIG_SRC" "$copy" || die "$copy differs from big.bin"
    fi
}

big_run() { # big_run LABEL NAME KEY CMD... (CMD copies big.bin to $DEST/NAME/)
    local label=$1 name=$2 key=$3
    shift 3
    mkdir -p "$DEST/$name"
    echo "== round $r: $label: big.bin ($BIG_MIB MiB)"
    timed "$@"
    verify_big "$DEST/$name/big.bin"
    local mbs
    mbs=$(calc 'b/1e6/s' b="$BIG_BYTES" s="$ELAPSED")
    printf '   %.2f s = %.1f MB/s (verified)\n' "$ELAPSED" "$mbs"
    add "$key" "$mbs" '%.0f'
    rm -f "$DEST/$name/big.bin" # a big copy goes at once: disk space
}

verify_small() { # verify_small DIR
    local dir=$1 n b
    [[ -d $dir ]] || die "$dir is missing"
    n=$(find "$dir" -type f | wc -l)
    b=$(find "$dir" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    [[ $n == "$SMALL_COUNT" && $b == "$SMALL_BYTES" ]] ||
        die "$dir has $n files / $b bytes, not $SMALL_COUNT / $SMALL_BYTES"
    diff -rq "$SMALL_SRC" "$dir" >/dev/null || die "$dir differs from $SMALL_SRC"
}

small_result() { # small_result DIR KEY (the copy stays until the cleanup at exit)
    verify_small "$1"
    local fps
    fps=$(calc 'n/s' n="$SMALL_COUNT" s="$ELAPSED")
    printf '   %.2f s = %.0f files/s (verified)\n' "$ELAPSED" "$fps"
    add "$2" "$fps" '%.0f'
}

# --- 4. the rounds --------------------------------------------------------------------

# The BENCH keys kept: the first ones are there today, the rest are optional
# (shown only when ferry reports them).
BENCH_KEYS=(big_bytes big_mbs big_cpu_s_per_gib quic_mbs local_mbs small_count small_rps small_cpu_ms
    set_fps set_cpu_ms history start_s list_ms rss_bytes cores
    big_cpu_a big_cpu_b small_cpu_a_ms small_cpu_b_ms set_cpu_a_ms set_cpu_b_ms rss_a_bytes rss_b_bytes
    small_busy_pct set_busy_pct)
BIG_BYTES='' BIG_MIB=0 SMALL_KIB='' FERRY_CORES='' SMALL_TOTAL=''
LIMIT=${FERRY_BENCH_SCP_SMALL_TIMEOUT:-120}

for ((r = 1; r <= ROUNDS; r++)); do
    RDIR=$WORK/round-$r
    echo
    echo "== round $r of $ROUNDS: ferry bench --dir $RDIR $*"
    "$FERRY" bench --dir "$RDIR" "$@" | tee "$WORK/ferry-$r.out"

    BENCH_LINE=$(sed -n 's/^BENCH //p' "$WORK/ferry-$r.out" | tail -n 1)
    [[ -n $BENCH_LINE ]] || die "no BENCH line in ferry bench's output (round $r)"
    declare -A B=()
    read -ra kvs <<<"$BENCH_LINE"
    for kv in "${kvs[@]}"; do
        [[ $kv == *=* ]] && B[${kv%%=*}]=${kv#*=}
    done
    [[ -n ${B[big_mbs]:-} && -n ${B[small_rps]:-} ]] || die "could not parse: BENCH $BENCH_LINE"
    for k in "${BENCH_KEYS[@]}"; do
        [[ -n ${B[$k]:-} ]] || continue
        case "$k" in
            *_cpu_*) add "f_$k" "${B[$k]}" '%.2f' ;;
            rss*) add "f_$k" "$(calc 'x / 1048576' x="${B[$k]}")" '%.0f' ;;
            *) add "f_$k" "${B[$k]}" '%.0f' ;;
        esac
    done
    [[ -z ${B[quic_mbs]:-} ]] || add f_push_quic "$(div "${B[big_mbs]}" "${B[quic_mbs]}")" '%.2f'
    FERRY_CORES=${B[cores]:-$FERRY_CORES}

    BIG_SRC=$RDIR/a/out/big.bin
    [[ -f $BIG_SRC ]] || die "$BIG_SRC is missing"
    size=$(stat -c %s "$BIG_SRC")
    [[ -z ${B[big_bytes]:-} || ${B[big_bytes]} == "$size" ]] ||
        die "big.bin has $size bytes but ferry bench reported big_bytes=${B[big_bytes]}"
    [[ -z $BIG_BYTES || $BIG_BYTES == "$size" ]] || die "round $r's big.bin has $size bytes, round 1's $BIG_BYTES"
    BIG_BYTES=$size
    BIG_MIB=$((BIG_BYTES >> 20))
    # The copy ferry delivered is not needed any more (one big inode).
    find "$RDIR" -type f -name big.bin ! -samefile "$BIG_SRC" -delete

    # The small files, in a folder of their own: hard links, no new inodes.
    SMALL_SRC=$RDIR/small-src
    mkdir -p "$SMALL_SRC"
    find "$RDIR/a/out" -maxdepth 1 -type f -name 'small-*.dat' -exec cp -l -t "$SMALL_SRC" {} +
    SMALL_COUNT=$(find "$SMALL_SRC" -type f | wc -l)
    SMALL_BYTES=$(find "$SMALL_SRC" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    if [[ -z $SMALL_KIB && $SMALL_COUNT -gt 0 ]]; then
        first=$(find "$SMALL_SRC" -type f -print -quit)
        SMALL_KIB=$(($(stat -c %s "$first") / 1024))
    fi
    SMALL_TOTAL=${SMALL_TOTAL:-$SMALL_COUNT}
    [[ $SMALL_COUNT == "$SMALL_TOTAL" ]] || die "round $r has $SMALL_COUNT small files, round 1 $SMALL_TOTAL"

    if [[ -z $SKIPPED ]]; then
        DEST=$RDIR/dest
        mkdir -p "$DEST"
        BIG_HASH=''
        if [[ ${#HASH[@]} -gt 0 ]]; then
            BIG_HASH=$(hash_of "$BIG_SRC")
            echo "== round $r: big.bin: $BIG_MIB MiB, ${HASH[0]} $BIG_HASH"
        fi

        big_run "scp -c aes128-gcm@openssh.com" scp-aes t_scp_aes \
            "${SCP[@]}" -c aes128-gcm@openssh.com "$BIG_SRC" "$HOST:$DEST/scp-aes/"
        big_run "scp (default cipher: $DEFAULT_CIPHER)" scp-default t_scp_default \
            "${SCP[@]}" "$BIG_SRC" "$HOST:$DEST/scp-default/"
        big_run "rsync -e ssh" rsync-big t_rsync_big \
            rsync -e "$SSH_CMD" "$BIG_SRC" "$HOST:$DEST/rsync-big/"

        if ((SMALL_COUNT > 0)); then
            echo "== round $r: rsync -a -e ssh: folder of $SMALL_COUNT small files"
            timed rsync -a -e "$SSH_CMD" "$SMALL_SRC/" "$HOST:$DEST/rsync-small/"
            small_result "$DEST/rsync-small" t_rsync_small

            echo "== round $r: scp -r: folder of $SMALL_COUNT small files (given up after ${LIMIT} s)"
            rc=0
            timed timeout "$LIMIT" "${SCP[@]}" -r "$SMALL_SRC" "$HOST:$DEST/scp-small" || rc=$?
            if ((rc == 0)); then
                small_result "$DEST/scp-small" t_scp_r
            elif ((rc == 124)); then
                echo "   gave up after ${LIMIT} s (the partial copy stays until the end)"
                add t_scp_r "$(calc 'n/s' n="$SMALL_COUNT" s="$LIMIT")" '%.0f' upper
            else
                die "scp -r failed (exit $rc)"
            fi
        fi
    fi
    rm -f "$BIG_SRC" # the round's big file: disk space
done

# --- 5. summary -------------------------------------------------------------------

CORES=$(nproc 2>/dev/null || echo "$FERRY_CORES")
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
CPU=$( (LC_ALL=C lscpu 2>/dev/null || true) | sed -n 's/^Model name: *//p' | head -n 1)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $COMMIT != unknown && -n $(git --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    COMMIT="$COMMIT (with uncommitted changes)"
fi
SMALL_DESC="$SMALL_TOTAL files"
[[ -n $SMALL_KIB ]] && SMALL_DESC="$SMALL_TOTAL x $SMALL_KIB KiB"

F_BIG=$(med f_big_mbs)
F_REQ=$(med f_small_rps)
F_SET=$(med f_set_fps)
F_PUSH_QUIC=$(med f_push_quic)

# tool_row LABEL KEY big|small: a row of the main table
tool_row() {
    local label=$1 key=$2 kind=$3 m shown r1 r2
    m=$(med "$key")
    [[ -n $m ]] || return 0
    if [[ -n ${UPPER[$key]:-} ]]; then
        shown="≤ $(fmt '%.0f' "$m")" # some rounds gave up: their figures are upper bounds
        r1=$(xfmt "$(div "$F_REQ" "$m")" '≥ ')
        r2=$(xfmt "$(div "$F_SET" "$m")" '≥ ')
    elif [[ $kind == small ]]; then
        shown=$(fmt '%.0f' "$m")
        r1=$(xfmt "$(div "$F_REQ" "$m")")
        r2=$(xfmt "$(div "$F_SET" "$m")")
    fi
    if [[ $kind == big ]]; then
        echo "| \`$label\` | $(fmt '%.1f' "$m") | — | $(xfmt "$(div "$F_BIG" "$m")") | — | $(rounds_of "$key") |"
    else
        echo "| \`$label\` | — | $shown | $r1 | $r2 | $(rounds_of "$key") |"
    fi
}

# bound_row LABEL KEY FORMAT: a row of ferry's table, when ferry reported KEY
bound_row() {
    local m
    m=$(med "$2")
    [[ -z $m ]] || echo "| $1 | $(fmt "$3" "$m") | $(rounds_of "$2") |"
}

# target TEXT VALUE LIMIT ge|le SHOWN: a line saying whether VALUE meets LIMIT
target() {
    local text=$1 value=$2 limit=$3 dir=$4 shown=$5 verdict
    if [[ -z $value ]]; then
        verdict="n/a${SKIPPED:+ (scp/rsync skipped)}"
        shown=''
    elif awk -v v="$value" -v l="$limit" -v d="$dir" 'BEGIN { exit !(d == "ge" ? v >= l : v <= l) }'; then
        verdict=met
    else
        verdict='not met'
    fi
    echo "- $text: ${shown:+$shown, }$verdict"
}

TABLE=$WORK/table.md
{
    if ((ROUNDS > 1)); then OF="medians of $ROUNDS interleaved rounds"; else OF="a single round (no medians)"; fi
    echo "Measured $DATE on $CORES cores${CPU:+ ($CPU)}, ferry commit $COMMIT; big file $BIG_MIB MiB," \
        "small files $SMALL_DESC; $OF."
    if [[ -z $SKIPPED ]]; then
        echo "Each round, in this order: \`ferry bench\` (a big push, one request per small file, the same"
        echo "files as one file set), then \`scp -c aes128-gcm@openssh.com\`, \`scp\` and \`rsync -e ssh\` of"
        echo "that round's big file, \`rsync -a -e ssh\` and \`scp -r\` of its small files. MB/s = 10^6 bytes/s."
    else
        echo "Each round runs \`ferry bench\`: a big push, one request per small file, the same files as"
        echo "one file set. MB/s = 10^6 bytes/s."
    fi
    echo
    echo "| tool | big file MB/s | small files/s | ferry / tool | file set / tool | rounds |"
    echo "|---|---:|---:|---:|---:|---|"
    echo "| \`ferry (2 nodes, QUIC, loopback)\` | $(fmt '%.1f' "$F_BIG") | $(fmt '%.0f' "$F_REQ") | — | — |" \
        "$(rounds_of f_big_mbs) MB/s; $(rounds_of f_small_rps) requests/s |"
    [[ -z $F_SET ]] ||
        echo "| \`ferry file set (one request)\` | — | $(fmt '%.0f' "$F_SET") | — | — | $(rounds_of f_set_fps) |"
    tool_row "scp -c aes128-gcm@openssh.com" t_scp_aes big
    tool_row "scp (default cipher: $DEFAULT_CIPHER)" t_scp_default big
    tool_row "rsync -e ssh" t_rsync_big big
    tool_row "rsync -a -e ssh (folder)" t_rsync_small small
    tool_row "scp -r (folder)" t_scp_r small
    echo
    if [[ -z $SKIPPED ]]; then
        echo "ferry / tool is the ratio of the medians: ferry's big push over the tool's for the big file,"
        echo "ferry's one request per file over the tool's for the small files; file set / tool likewise"
        echo "with ferry's file set. Rounds: each round's figure, in order."
    else
        echo "Rounds: each round's figure, in order."
    fi
    [[ -z ${UPPER[t_scp_r]:-} ]] ||
        echo "\`scp -r\` was given up after $LIMIT s in some rounds (\"<\"): its median is an upper bound."
    echo
    echo "| ferry: bounds and CPU | median | rounds |"
    echo "|---|---:|---|"
    bound_row "raw QUIC stream, no disk or hashing (transport bound), MB/s" f_quic_mbs '%.1f'
    bound_row "big push / raw QUIC (median of the rounds' ratios)" f_push_quic '%.2fx'
    bound_row "read + BLAKE3 of the big file (local bound), MB/s" f_local_mbs '%.1f'
    bound_row "CPU s per GiB of the big push, both nodes" f_big_cpu_s_per_gib '%.2f'
    bound_row "CPU s per GiB, sender (a)" f_big_cpu_a '%.2f'
    bound_row "CPU s per GiB, receiver (b)" f_big_cpu_b '%.2f'
    bound_row "CPU ms per small request, both nodes" f_small_cpu_ms '%.2f'
    bound_row "CPU ms per small request, sender (a)" f_small_cpu_a_ms '%.2f'
    bound_row "CPU ms per small request, receiver (b)" f_small_cpu_b_ms '%.2f'
    bound_row "CPU ms per file of the file set, both nodes" f_set_cpu_ms '%.2f'
    bound_row "CPU ms per file of the file set, sender (a)" f_set_cpu_a_ms '%.2f'
    bound_row "CPU ms per file of the file set, receiver (b)" f_set_cpu_b_ms '%.2f'
    bound_row "the machine's cores busy, one request per file, %" f_small_busy_pct '%.0f'
    bound_row "the machine's cores busy, the file set, %" f_set_busy_pct '%.0f'
    bound_row "resident memory at the end, MiB, both nodes" f_rss_bytes '%.0f'
    bound_row "resident memory at the end, MiB, node a" f_rss_a_bytes '%.0f'
    bound_row "resident memory at the end, MiB, node b" f_rss_b_bytes '%.0f'
    echo
    echo "Targets, on the medians:"
    SCP_AES=$(med t_scp_aes)
    R=$(div "$F_BIG" "$SCP_AES")
    target "big push ≥ 2.5x \`scp -c aes128-gcm@openssh.com\`" "$R" 2.5 ge "$(xfmt "$R")"
    [[ -z $F_PUSH_QUIC ]] ||
        target "big push ≥ 0.85x the raw QUIC stream (median of the rounds' ratios)" "$F_PUSH_QUIC" 0.85 ge \
            "$(xfmt "$F_PUSH_QUIC")"
    CPU_A=$(med f_big_cpu_a)
    CPU_B=$(med f_big_cpu_b)
    [[ -z $CPU_A ]] || target "sender's CPU ≤ 2.2 s per GiB" "$CPU_A" 2.2 le "$(fmt '%.2f' "$CPU_A")"
    [[ -z $CPU_B ]] || target "receiver's CPU ≤ 2.2 s per GiB" "$CPU_B" 2.2 le "$(fmt '%.2f' "$CPU_B")"
    R=$(div "$F_SET" "$(med t_rsync_small)")
    target "file set ≥ 2x \`rsync -a -e ssh (folder)\`" "$R" 2 ge "$(xfmt "$R")"
    target "one request per file ≥ 1,500 requests/s" "$F_REQ" 1500 ge "$(fmt '%.0f' "$F_REQ")"
    echo
    if [[ -n $SKIPPED ]]; then
        echo "scp/rsync comparison skipped: $SKIPPED."
    else
        echo "ferry's figures include fsync of the delivered files and verification; scp and rsync are timed"
        echo "until the command returns (no fsync). All copies read from the page cache."
    fi
} >"$TABLE"
align_md "$TABLE"

echo
echo "== summary"
cat "$TABLE"

# --- 6. --record ------------------------------------------------------------------

if ((RECORD)); then
    DOC=${FERRY_BENCH_DOC:-docs/BENCHMARKS.md}
    [[ $DOC == /* ]] || DOC=$REPO/$DOC
    mkdir -p "$(dirname "$DOC")"
    if [[ ! -f $DOC ]]; then
        cat >"$DOC" <<'EOF'
# Benchmarks

`ferry bench` starts two nodes in one process on loopback and times, through
the REST API as an operator's scheduler would:

- one push of a big file (1 GiB by default), until it is verified, fsynced and
  delivered: MB/s;
- many small files (2,000 x 4 KiB by default), each its own request: requests/s;
- the same small files as one file set: files/s.

`cluster/bench.sh` runs it, then copies the very same files with `scp` and
`rsync` through a private sshd on 127.0.0.1 and verifies every copy; it does
so in 3 interleaved rounds (`--rounds N`) and reports the medians, with
ferry's ratio to each tool. To rerun and rewrite the section below:

    cluster/bench.sh --record              # as root; the defaults, 1 GiB and 2,000 x 4 KiB
    cluster/bench.sh --rounds 1 --big-mib 128 --small-count 300   # a quick try, records nothing

The figures come from one machine, with everything on loopback; they vary with
the machine, its core count (given with the table) and its load. Compare
ratios more than absolute numbers.

## Latest run

<!-- bench:begin -->
<!-- bench:end -->
EOF
    fi
    if ! grep -q '^<!-- bench:begin -->' "$DOC" || ! grep -q '^<!-- bench:end -->' "$DOC"; then
        printf '\n<!-- bench:begin -->\n<!-- bench:end -->\n' >>"$DOC"
    fi
    awk -v table="$TABLE" '
        /^<!-- bench:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
        /^<!-- bench:end -->/ { skip = 0 }
        !skip { print }
    ' "$DOC" >"$WORK/BENCHMARKS.md.new"
    cat "$WORK/BENCHMARKS.md.new" >"$DOC"
    echo "recorded in ${DOC#"$REPO"/}"
fi
