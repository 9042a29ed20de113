#!/usr/bin/env bash
# The project's test command (README, CI): setup, formatting, lints, the
# dependency-direction check, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# Build artifacts live outside the clone so repeated runs (and CI on the same
# machine) reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
export CARGO_TERM_COLOR=never

echo "== dependency direction: engine must not depend on other sluice crates"
if grep -E '^sluice-' engine/Cargo.toml; then
  echo "engine/Cargo.toml names another sluice crate" >&2
  exit 1
fi

echo "== cargo fmt"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --workspace --quiet
