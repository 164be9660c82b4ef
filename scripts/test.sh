#!/usr/bin/env bash
# Every test of flipstack, on every tier, with real services:
#   installs what is missing (apt-get, pip), builds once, starts a MariaDB
#   primary + GTID replica, memcached and moto_server on free loopback ports in
#   a temporary folder, runs the whole suite, and stops them, also on failure.
# Extra arguments go to the test runner (e.g. a filter).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v cargo >/dev/null; then
  log "cargo is missing: install Rust with https://rustup.rs (curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh)"
  exit 1
fi

# Build tools for libjpeg-turbo (the turbojpeg crate builds it from source), and
# strace, which shows the durability test the fsyncs of the real binary.
need=()
for tool in cmake nasm cc python3 curl tmux strace; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=()
  for t in "${need[@]}"; do case $t in cc) pkgs+=(build-essential) ;; *) pkgs+=("$t") ;; esac; done
  log "installing ${pkgs[*]} with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
fi
# HEIC/AVIF: Debian's libheif to link against (it brings libde265 and x265
# for HEVC, dav1d and aom for AV1) and its tools (heif-enc, heif-convert),
# which the HEIC benchmark runs beside flipstack.
if [ "$(dpkg-query -W -f='${Status}\n' libheif-dev libheif-examples 2>/dev/null | grep -c 'install ok installed')" != 2 ]; then
  log "installing libheif-dev libheif-examples with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libheif-dev libheif-examples
fi
scripts/services.sh ensure
# The browser suite drives Debian's Chromium through chromedriver.
if ! command -v chromedriver >/dev/null || ! [ -x /usr/bin/chromium ]; then
  log "installing chromium and chromium-driver with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
fi

# One target folder outside the clone: CI and later runs reuse the build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/flipstack/target}
# nextest reports the tests it does not run as skipped (.config/nextest.toml):
# the profile "ci" runs every tier; without the corpus its tests are skipped.
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest (cargo install --locked)"
  cargo install --locked cargo-nextest
fi
runner=(cargo nextest run --workspace --no-fail-fast --profile ci)
build=(cargo nextest run --workspace --no-run)
if [ -d ../shared/testdata ]; then
  log "corpus: ../shared/testdata is present; the corpus tests run on it"
else
  log "corpus: ../shared/testdata is absent; the corpus_* tests are skipped (generated pictures only)"
  runner+=(-E 'not test(/^corpus_/)')
fi

# Dependencies: licences, bans (duplicate majors that can be removed),
# sources (deny.toml), and advisories (RustSec's database, fetched from its git
# repository: a machine that cannot reach it is told so and the check of the
# other three still runs).
if ! cargo deny --version >/dev/null 2>&1; then
  log "installing cargo-deny (cargo install --locked)"
  cargo install --locked cargo-deny
fi
log "cargo deny check: licences, bans, sources"
cargo deny --log-level error check bans licenses sources
if cargo deny --log-level error fetch db >/dev/null 2>&1; then
  log "cargo deny check: advisories"
  cargo deny --log-level error check --disable-fetch advisories
else
  log "cargo deny: the RustSec advisory database cannot be fetched from this machine; advisories NOT checked (run \`cargo deny check advisories\` where it can be reached)"
fi
log "building (target: $CARGO_TARGET_DIR)"
"${build[@]}"

# The release must run on Amazon Linux 2023 (glibc 2.34): the same check
# `provision up` makes, on the binary just built (the debug build: a release
# build would double the run's time; both link the same C library symbols).
log "glibc needed by the flipstack binary (Amazon Linux 2023 has 2.34):"
"$CARGO_TARGET_DIR/debug/flipstack" provision check-release

dir=$(mktemp -d "${TMPDIR:-/tmp}/flipstack-services.XXXXXX")
trap 'scripts/services.sh down "$dir" || true; rm -rf "$dir"' EXIT INT TERM
scripts/services.sh up "$dir"
# shellcheck disable=SC1091
source "$dir/env"
export FLIPSTACK_TEST_TIERS=embedded,mariadb,aws
export RUST_BACKTRACE=1
"${runner[@]}" "$@"
log "browser screenshots (375 and 1280 px wide): target/screenshots/"
