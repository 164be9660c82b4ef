#!/usr/bin/env bash
# Runs flipstack on this machine with embedded defaults (SQLite, in-process
# cache, a local folder for pictures, an outbox folder for mail): installs the
# build tools if missing, builds, and starts `flipstack up` on 127.0.0.1:5000.
# Extra arguments go to `flipstack up` (see `flipstack up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v cargo >/dev/null; then
  echo "up.sh: cargo is missing: install Rust with https://rustup.rs" >&2
  exit 1
fi
need=()
for tool in cmake nasm cc; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=()
  for t in "${need[@]}"; do case $t in cc) pkgs+=(build-essential) ;; *) pkgs+=("$t") ;; esac; done
  echo "up.sh: installing ${pkgs[*]} (libjpeg-turbo is built from source)" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
fi
# HEIC/AVIF: Debian's libheif to link against (with libde265, x265, dav1d, aom).
if [ "$(dpkg-query -W -f='${Status}' libheif-dev 2>/dev/null)" != "install ok installed" ]; then
  echo "up.sh: installing libheif-dev (HEIC and AVIF)" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libheif-dev
fi
# The same target folder as the tests: one build serves both.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/flipstack/target}
# No --quiet: a first build takes minutes, and cargo shows what it compiles.
exec cargo run -- up "$@"
