#!/usr/bin/env bash
# Shows that each invariant catches a bug planted on purpose.
#
# For every simulations/planted/*.patch: check out HEAD in a scratch
# worktree, apply the patch, run the scenario its header names over its
# seeds, and expect the run to FAIL on the invariant its header names. The
# patch never touches this checkout. Exits non-zero if a planted bug went
# unnoticed (or did not build).
#
# The worktree builds into its own target folder (PLANTED_TARGET_DIR,
# default target/planted; the first run builds the dependencies): cargo
# names a workspace member's outputs after its path *within* the
# workspace, so sharing this checkout's target folder would overwrite its
# test binaries with the planted ones while they run. Point it at target/
# to save the build when nothing else is building or running tests.
#
#   simulations/planted.sh            # every patch
#   simulations/planted.sh 3          # the patch numbered 3 (3-*.patch)
set -euo pipefail

repo=$(git rev-parse --show-toplevel)
cd "$repo"
target=${PLANTED_TARGET_DIR:-$repo/target/planted}
work=$(mktemp -d /tmp/ferry-planted.XXXXXX)
cleanup() {
    git worktree remove --force "$work/tree" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

git worktree add --detach "$work/tree" HEAD >/dev/null
failed=0
for patch in simulations/planted/${1:+$1-}*.patch; do
    invariant=$(sed -n 's/^# invariant: //p' "$patch")
    read -r scenario seeds < <(sed -n 's/^# run: //p' "$patch")
    name=$(basename "$patch" .patch)
    git -C "$work/tree" checkout --quiet -- .
    git -C "$work/tree" apply "$repo/$patch"
    echo "== $name: expect '$invariant' to catch it in $scenario ($seeds seeds)"
    log="$work/$name.log"
    if (cd "$work/tree" && SIM_SEEDS=$seeds CARGO_TARGET_DIR=$target \
        cargo test --quiet --test simulations "$scenario" -- --exact --nocapture) >"$log" 2>&1; then
        echo "   NOT CAUGHT: the scenario passed with the bug in place"
        failed=1
    elif grep -q "^  $invariant: " "$log"; then
        grep -m1 "failed with seed" "$log" | sed 's/^/   /'
        grep -m1 "^  $invariant: " "$log" | cut -c1-220 | sed 's/^/   /'
        grep -m1 "^replay:" "$log" | sed 's/^/   /'
    else
        echo "   FAILED, but not on '$invariant' (see below)"
        grep -E "failed with seed|^  [a-z ]+: |error(\[|:)" "$log" | head -5 | sed 's/^/   /'
        failed=1
    fi
done
git -C "$work/tree" checkout --quiet -- .
exit $failed
