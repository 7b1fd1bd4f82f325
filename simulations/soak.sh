#!/usr/bin/env bash
# The long soak: every scenario over COUNT seeds (default 2000) from FIRST
# (default 1), two scenarios at a time. A failure prints its seed and the
# command that replays it. About an hour and a half for 2000 seeds on 2 cores.
#
#   simulations/soak.sh [COUNT] [FIRST]
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
SIM_SEEDS=${1:-2000} SIM_FIRST_SEED=${2:-1} \
    cargo test --test simulations -- --nocapture --test-threads=2 --skip a_seed_replays_exactly
