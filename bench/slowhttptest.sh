#!/usr/bin/env bash
# Slow clients against `flipstack serve`, with the real tool (Debian's
# slowhttptest): slow headers (-H, slowloris) and slow bodies (-B, R-U-Dead-Yet).
#
#   bench/slowhttptest.sh [SECONDS] [CONNECTIONS]     (defaults: 40 s, 400)
#
# Starts `flipstack serve` on embedded defaults on a free loopback port, runs
# each attack for SECONDS with 50 connections (under the per-client cap of
# 64) and then CONNECTIONS connections from 127.0.0.1, and
# meanwhile probes the server once a second from another address
# (127.0.0.2, a different client to the per-client connection cap). It prints
# slowhttptest's own verdict, the probe's, how many of the attack's
# connections the server closed, and exits non-zero when the service was
# unavailable to the other client or the slow connections were not closed.
# Only 127.0.0.0/8 is used; every loop is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-40}
conns=${2:-400}
log() { printf 'slowhttptest.sh: %s\n' "$*" >&2; }

if ! command -v slowhttptest >/dev/null; then
  log "installing slowhttptest with apt-get"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q slowhttptest >/dev/null; else sudo apt-get install -y -q slowhttptest >/dev/null; fi
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/flipstack/target}
bin=${FLIPSTACK_BIN:-}
if [ -z "$bin" ]; then
  cargo build --quiet --bin flipstack
  bin=$CARGO_TARGET_DIR/debug/flipstack
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/flipstack-slow.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
FLIPSTACK_DATA_DIR=$work/data FLIPSTACK_LISTEN=127.0.0.1:$port RUST_LOG=warn "$bin" serve >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/form" && break; sleep 0.1; done

fail=0
run() { # mode url extra...
  local mode=$1 url=$2; shift 2
  log "slowhttptest $mode: $conns connections for ${seconds}s against $url"
  slowhttptest "$mode" -c "$conns" -r 200 -i 5 -l "$seconds" -u "$url" -g -o "$work/out$mode" "$@" >"$work/st$mode.log" 2>&1 &
  local st=$!
  local probes=0 ok=0
  for _ in $(seq "$seconds"); do
    sleep 1
    probes=$((probes + 1))
    if curl -s --interface 127.0.0.2 -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/form" | grep -q 200; then
      ok=$((ok + 1))
    fi
  done
  wait $st || true
  local csv="$work/out$mode.csv"
  # Columns: seconds, closed, pending, connected, service available.
  local closed max_connected
  closed=$(tail -n 1 "$csv" | cut -d, -f2)
  max_connected=$(tail -n +2 "$csv" | cut -d, -f4 | sort -n | tail -n 1)
  local clean ended exit_status verdict
  clean=$(sed 's/\x1b\[[0-9;]*m//g' "$work/st$mode.log")
  verdict=$(grep -o 'service available:.*' <<<"$clean" | tail -n 1 | tr -s ' ' || true)
  ended=$(grep -o 'Test ended on [0-9]*[a-z]* second' <<<"$clean" | tail -n 1 || true)
  exit_status=$(grep -o 'Exit status: .*' <<<"$clean" | tail -n 1 || true)
  printf '%s x%s: probes from another client answered %d of %d; most attack connections open at once: %s; %s (%s); slowhttptest own probe, last: %s; closed by the server by then: %s\n' \
    "$mode" "$conns" "$ok" "$probes" "$max_connected" "${ended:-ran to the end}" "${exit_status:-?}" "${verdict:-?}" "$closed"
  # The server must have closed the slow connections: slowhttptest ends
  # early with none left, or counts them closed.
  if [ "$ok" -lt "$probes" ]; then fail=1; fi
  if [[ "$exit_status" != *"No open connections left"* ]] && [ "${closed:-0}" -eq 0 ]; then fail=1; fi
}

# Under the per-client connection cap (slowhttptest's own probe, from the
# attacker's address, must then see the service), then far past it.
for n in 50 "$conns"; do
  conns=$n
  run -H "http://127.0.0.1:$port/form"
  run -B "http://127.0.0.1:$port/upload" -f 'multipart/form-data; boundary=XyZ' -s 1000000
  run -B "http://127.0.0.1:$port/signin" -s 8000
done

curl -sf -o /dev/null "http://127.0.0.1:$port/form" || { log "the server does not answer after the attacks"; fail=1; }
grep -E 'connections_(timed_out|refused)_total' <(curl -s "http://127.0.0.1:$port/metrics") || true
exit $fail
