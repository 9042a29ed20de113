#!/usr/bin/env bash
# The README's first command: installs what building needs (system packages,
# once), then builds and runs a job binary of sluice-jobs embedded, in
# release mode. `scripts/run.sh` runs the example job; `scripts/run.sh JOB
# ARGS...` runs another (nexmark, window_agg, kafka_to_parquet) with its
# arguments, relative paths meaning what they mean where you are.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh" build
job="${1:-example}"
[ $# -gt 0 ] && shift
exec cargo run --release --manifest-path "$root/Cargo.toml" -p sluice-jobs --bin "$job" -- "$@"
