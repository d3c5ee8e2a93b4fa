#!/usr/bin/env bash
# scripts/bench.sh — run the benchmark suites (tools/loadgen) and rewrite the results table of
# docs/benchmarks.md between its markers. The table is generated, never edited by hand.
#
# Usage: scripts/bench.sh [--quick] [--no-build] [--update-doc] [SUITE...] [-- LOADGEN-SUITE-ARGS...]
#
#   (no SUITE)     every suite (`loadgen list-suites`); ~11 min on 2 cores. Rewrites docs/benchmarks.md.
#   SUITE...       only these suites (e.g. single-queued ack-kafka); the doc is left alone unless --update-doc.
#   --quick        3 s runs, 2 repeats: checks that the harness works; the doc is left alone unless --update-doc.
#   --no-build     use the binaries already in target/release.
#   --update-doc   rewrite the doc's table even for a subset or --quick.
#   -- ARGS        passed to `loadgen suite`, e.g. -- --repeats 5 --duration 10s --threads 2
#
# Needs the Kafka broker of scripts/kafka.sh on 127.0.0.1:9092 (started here if it is not running; never
# stopped). Results: target/bench/<timestamp>/results.{json,md}; logs of every spawned service in
# target/loadgen/logs/. All load goes to 127.0.0.1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DOC=docs/benchmarks.md
BEGIN='<!-- bench-results:begin -->'
END='<!-- bench-results:end -->'

quick=()
build=1
update_doc=0
suites=()
extra=()
while (($#)); do
  case "$1" in
    --quick) quick=(--quick) ;;
    --no-build) build=0 ;;
    --update-doc) update_doc=1 ;;
    -h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    -*) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) suites+=("$1") ;;
  esac
  shift
done
if ((${#suites[@]} == 0 && ${#quick[@]} == 0)); then
  update_doc=1
fi
if ((update_doc)); then
  grep -qF "$BEGIN" "$DOC" && grep -qF "$END" "$DOC" || { echo "bench.sh: $DOC lacks the $BEGIN / $END markers" >&2; exit 1; }
fi

started_kafka=0
if ! scripts/kafka.sh status >/dev/null 2>&1; then
  echo "bench.sh: starting Kafka (scripts/kafka.sh start)" >&2
  scripts/kafka.sh start >/dev/null
  started_kafka=1
fi
kafka_version=$(scripts/kafka.sh env 2>/dev/null | sed -n 's/^KAFKA_VERSION=//p')

if ((build)); then
  cargo build --release --locked -p event-ingestor
  cargo build --release --locked -p loadgen
fi

out="target/bench/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
echo "bench.sh: results in $out" >&2

# A broker started a moment ago still has its JIT compiling, which takes most of a core in bursts for the
# first minutes: the first rows would measure the broker's warm-up (docs/benchmarks.md, row (g)). So a
# broker this script started gets a minute of the same kinds of runs first (topics created and deleted,
# produce, read-back), unmeasured.
if ((started_kafka)) && ((${#quick[@]} == 0)); then
  echo "bench.sh: warming up the new broker (≈ 1 min, not measured; log in $out/broker-warmup.log)" >&2
  target/release/loadgen compare --scenarios full,raw-kafka --connections 64 --batch 1 --ack kafka \
    --repeats 2 --duration 12s --warmup 0s --steal-limit 0 \
    --service-bin target/release/event-ingestor >"$out/broker-warmup.log" 2>&1 ||
    { echo "bench.sh: the broker warm-up failed; see $out/broker-warmup.log" >&2; exit 1; }
fi
target/release/loadgen suite "${suites[@]}" "${quick[@]}" \
  --service-bin target/release/event-ingestor \
  --kafka-label "Kafka ${kafka_version:-?} single node (scripts/kafka.sh)" \
  --json "$out/results.json" --markdown "$out/results.md" "${extra[@]}"

if ((update_doc)); then
  tmp=$(mktemp)
  awk -v frag="$out/results.md" -v begin="$BEGIN" -v end="$END" '
    index($0, begin) { print; print ""; while ((getline line < frag) > 0) print line; print ""; skip = 1; next }
    index($0, end)   { skip = 0 }
    !skip            { print }
  ' "$DOC" >"$tmp"
  cat "$tmp" >"$DOC"
  rm -f "$tmp"
  echo "bench.sh: rewrote the results table in $DOC" >&2
else
  echo "bench.sh: $DOC left as it is (use --update-doc to write this run's table there)" >&2
fi
