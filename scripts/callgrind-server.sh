#!/usr/bin/env bash
# scripts/callgrind-server.sh — the user-space instructions one request costs in a whole server process
# (sockets, hyper, connection handling, middleware, handler, queue), counted by valgrind's callgrind:
# deterministic where load runs on this shared machine are not. docs/benchmarks.md ("The request path's
# cost") has the figures.
#
# Usage: scripts/callgrind-server.sh [service|bare] [--bin PATH] [--keep DIR]
#
#   service (default)  target/release/event-ingestor with PUBLISHER=noop (the Kafka step swapped out)
#   bare               `loadgen bare-server`: axum answering 202, nothing else
#   --bin PATH         another build of the service (to compare two commits)
#   --keep DIR         keep the callgrind output files there (for callgrind_annotate)
#
# The server runs under callgrind twice, taking 2,000 and then 6,000 single events from `loadgen run
# --target url --connections 64`; the difference of the two totals ÷ 4,000 is one request's cost, start-up
# and shutdown cancelled out. Needs valgrind (apt-get install valgrind), release builds of both binaries
# (built here unless --bin is given) and, for the service, the broker of scripts/kafka.sh: with
# PUBLISHER=noop nothing is sent, but the producer still connects, and its reconnection attempts to a
# missing broker would be counted with the requests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=service
bin=
keep=
while (($#)); do
  case "$1" in
    service | bare) target=$1 ;;
    --bin) bin=$2; shift ;;
    --keep) keep=$2; shift ;;
    -h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "callgrind-server.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ $target == service ]] && ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
  echo "callgrind-server.sh: no broker at 127.0.0.1:9092 (scripts/kafka.sh start)" >&2
  exit 1
fi
command -v valgrind >/dev/null || { echo "callgrind-server.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
cargo build --release --quiet -p loadgen
loadgen=target/release/loadgen
if [[ $target == bare ]]; then
  bin=$loadgen
elif [[ -z $bin ]]; then
  cargo build --release --quiet --bin event-ingestor
  bin=target/release/event-ingestor
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Prints the total instructions of one server process that answered $1 requests.
run_once() {
  local n=$1 out=$work/callgrind.$1.out log=$work/server.$1.log
  mkdir -p "$work/spool.$n"
  local cmd=("$bin")
  [[ $target == bare ]] && cmd=("$bin" bare-server --bind 127.0.0.1:0 --threads 0)
  PUBLISHER=noop HTTP_PORT=0 ADMIN_PORT=0 RATE_LIMIT_RPS=0 LOG_LEVEL=info SPOOL_DIR="$work/spool.$n" \
    KAFKA_BROKERS=127.0.0.1:9092 \
    valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" >"$log" 2>"$work/valgrind.$n.log" &
  local pid=$! addr=
  for _ in $(seq 1 240); do
    addr=$(grep -o '"http_addr":"[^"]*"' "$log" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
    [[ -n $addr ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/valgrind.$n.log" >&2; exit 1; }
    sleep 0.5
  done
  [[ -n $addr ]] || { echo "callgrind-server.sh: the server did not start listening" >&2; exit 1; }
  "$loadgen" run --target url --url "http://127.0.0.1:${addr##*:}/events" --connections 64 --count "$n" \
    --warmup 0 --json "$work/load.$n.json" 2>"$work/load.$n.log" \
    || { cat "$work/load.$n.log" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" || true
  [[ -n $keep ]] && mkdir -p "$keep" && cp "$out" "$keep/"
  awk '/^summary:/ {print $2}' "$out"
}

small=$(run_once 2000)
large=$(run_once 6000)
per=$(((large - small) / 4000))
echo "$target ($bin): $small instructions after 2,000 requests, $large after 6,000: $per a request"
