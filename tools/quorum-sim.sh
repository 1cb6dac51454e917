#!/usr/bin/env bash
# Runs the controller quorum's seeded simulation (cluster/src/quorum/sim.rs) over many
# seeds in a release build: 3 and 5 controllers under loss, reordering, duplication,
# partitions, crashes and restarts, checked for election safety, state machine safety,
# leader completeness and liveness.
#
#   tools/quorum-sim.sh                 # 2000 seeds from 0
#   tools/quorum-sim.sh 10000 50000     # 10000 seeds from 50000
#   SLUICE_SIM_SEED=1234 tools/quorum-sim.sh   # one seed, e.g. one that failed
#
# A failure prints its seed, the seed's fault rates and the last events; rerun it alone
# with SLUICE_SIM_SEED=<seed> (in release here, or in debug with cargo test).
set -euo pipefail
cd "$(dirname "$0")/.."

seeds="${1:-2000}"
start="${2:-0}"
export SLUICE_SIM_SEEDS="$seeds"
export SLUICE_SIM_SEED_START="$start"

exec cargo test --release -p sluice-cluster --lib quorum::sim -- --nocapture --test-threads 2
