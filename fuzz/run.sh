#!/usr/bin/env bash
# Runs every fuzz target for a bounded time; exits non-zero if any crashes.
#
#   fuzz/run.sh [SECONDS] [TARGET...]    SECONDS per target, default 60
#
#   fuzz/run.sh 20                 CI: every target, 20 s each
#   fuzz/run.sh 3600 frame         a long run of one target
#
# Works on a stable toolchain: installs cargo-fuzz from crates.io if missing
# and builds without a sanitizer (`-s none`, nothing nightly-only is needed).
# When `cargo +nightly` is available it builds with AddressSanitizer instead.
# Override with FUZZ_TOOLCHAIN=stable|nightly and FUZZ_SANITIZER=none|address;
# FUZZ_ARGS adds libFuzzer options (e.g. FUZZ_ARGS="-jobs=4 -workers=4").
#
# Targets are built in release mode with debug assertions and overflow checks
# (`-O -a`), into $CARGO_TARGET_DIR if set, else fuzz/target; with 16 codegen
# units for runs of up to 300 s (faster build), else 1 (FUZZ_CODEGEN_UNITS
# overrides). Each run reads
# the committed corpus fuzz/corpus/TARGET but writes new inputs to a
# temporary directory (or to $FUZZ_CORPUS_OUT/TARGET if set), so a run never
# changes the checkout; a crashing input goes to fuzz/artifacts/TARGET/
# (git-ignored). See docs/FUZZING.md.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

secs="${1:-60}"
if [[ $# -gt 0 ]]; then shift; fi
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [[ "$secs" -lt 1 ]]; then
  echo "usage: fuzz/run.sh [SECONDS] [TARGET...]" >&2
  exit 2
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Toolchain and sanitizer: AddressSanitizer needs nightly (-Zsanitizer).
toolchain="${FUZZ_TOOLCHAIN:-}"
if [[ -z "$toolchain" ]]; then
  if cargo +nightly --version >/dev/null 2>&1; then toolchain=nightly; else toolchain=stable; fi
fi
sanitizer="${FUZZ_SANITIZER:-}"
if [[ -z "$sanitizer" ]]; then
  if [[ "$toolchain" == nightly ]]; then sanitizer=address; else sanitizer=none; fi
fi
cargo_tc=()
if cargo "+$toolchain" --version >/dev/null 2>&1; then
  cargo_tc=("+$toolchain")
fi

target_dir="${CARGO_TARGET_DIR:-$here/target}"
host="$(rustc "${cargo_tc[@]}" -vV | sed -n 's/^host: //p')"
bin_dir="$target_dir/$host/release"
# Short runs (CI) build with 16 codegen units: about half the build time of
# cargo-fuzz's default of 1, for somewhat slower executions; long runs use 1.
cgu="${FUZZ_CODEGEN_UNITS:-}"
if [[ -z "$cgu" ]]; then
  if [[ "$secs" -le 300 ]]; then cgu=16; else cgu=1; fi
fi
build=(cargo "${cargo_tc[@]}" fuzz build -O -a -s "$sanitizer" --codegen-units "$cgu" --target-dir "$target_dir")

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

echo "== fuzz: ${targets[*]} for ${secs}s each (toolchain $toolchain, sanitizer $sanitizer, codegen units $cgu)"
cargo "${cargo_tc[@]}" --version
t0=$SECONDS
"${build[@]}"
echo "== fuzz: built in $((SECONDS - t0))s"

work="$(mktemp -d "${TMPDIR:-/tmp}/ferry-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

failed=()
summary=()
for t in "${targets[@]}"; do
  seeds="$here/corpus/$t"
  mkdir -p "$seeds"
  if [[ -n "${FUZZ_CORPUS_OUT:-}" ]]; then
    out="$FUZZ_CORPUS_OUT/$t"
  else
    out="$work/corpus-$t"
  fi
  mkdir -p "$out" "$here/artifacts/$t"
  log="$work/$t.log"
  echo "== fuzz $t: ${secs}s, corpus $seeds (new inputs to $out)"
  # libFuzzer writes new inputs to the FIRST corpus directory: the scratch one.
  set +e
  "$bin_dir/$t" "$out" "$seeds" \
    -max_total_time="$secs" \
    -timeout=25 \
    -rss_limit_mb=2048 \
    -print_final_stats=1 \
    -artifact_prefix="$here/artifacts/$t/" ${FUZZ_ARGS:-} >"$log" 2>&1
  rc=$?
  set -e
  runs="$(sed -n 's/^Done \([0-9]*\) runs in .*/\1/p' "$log" | tail -n 1)"
  corp="$(grep -o 'corp: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)"
  line="$(printf '%-10s %5ss  runs %-10s corpus %-5s cov %s' "$t" "$secs" "${runs:-?}" "${corp:-?}" "${cov:-?}")"
  if [[ $rc -ne 0 ]]; then
    grep -E 'panicked at|^==[0-9]+==ERROR|SUMMARY|deadly signal|Test unit written to|Base64:' "$log" | head -n 20 || true
    tail -n 60 "$log"
    crash="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    line="$line  FAILED (exit $rc)${crash:+: $crash}"
    failed+=("$t${crash:+ -> $crash}")
    if [[ -n "$crash" ]]; then
      echo "   reproduce: (cd fuzz && cargo ${cargo_tc[*]} fuzz run -O -a -s $sanitizer --codegen-units $cgu $t $crash)"
      echo "   minimize:  (cd fuzz && cargo ${cargo_tc[*]} fuzz tmin -O -a -s $sanitizer --codegen-units $cgu $t $crash)"
    fi
  else
    tail -n 3 "$log"
  fi
  summary+=("$line")
done

echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "== fuzz: ${#failed[@]} target(s) failed:" >&2
  printf '   %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "== fuzz: no crash"
