#!/usr/bin/env bash
# scripts/kafka.sh — run a real single-node Apache Kafka broker (KRaft,
# broker+controller in one JVM) on 127.0.0.1, without Docker, from Maven
# Central jars. For CI and developers. Needs only Java 17+ and Maven 3.
#
# Usage: scripts/kafka.sh <command> [args]
#
#   start      fetch jars if needed, format storage if needed, start the broker
#              in the background and wait until it accepts an acks=all produce.
#              Prints the bootstrap address (127.0.0.1:$KAFKA_PORT) on stdout,
#              everything else on stderr:  BOOTSTRAP=$(scripts/kafka.sh start)
#              Already running -> no-op success.
#   stop       SIGTERM (controlled shutdown), SIGKILL after $KAFKA_STOP_TIMEOUT s.
#              Not running -> no-op success.
#   restart    stop + start.
#   kill       SIGKILL the broker (fault tests); `start` again reuses the same
#              data dir and the data survives.
#   status     exit 0 if running and the port accepts connections,
#              1 if the process runs but is not reachable, 3 if not running.
#   probe      produce one record with acks=all now; exit 0 on success.
#   fetch      only download the jars into the cache.
#   logs [-f|-n N]  print the broker log path (stderr) and its tail (stdout).
#   topics ARGS...  kafka-topics against this broker, e.g. `topics --list`.
#   run-class CLASS ARGS...  run any Kafka main class on the cached classpath.
#   reset      stop and delete $KAFKA_DATA_DIR (all topics and data).
#   env        print the effective settings.
#
# Environment (defaults):
#   KAFKA_VERSION         4.4.0
#   KAFKA_PORT            9092     client (PLAINTEXT) listener on 127.0.0.1
#   KAFKA_CONTROLLER_PORT 9093     KRaft controller listener on 127.0.0.1
#   KAFKA_DATA_DIR        ${XDG_STATE_HOME:-$HOME/.local/state}/event-ingestor/kafka-$KAFKA_PORT
#                         (server.properties, kafka.pid, kafka.out, logs/, data/)
#   EVENT_INGESTOR_CACHE  ${XDG_CACHE_HOME:-$HOME/.cache}/event-ingestor
#                         (jars in kafka-$KAFKA_VERSION/libs; never inside the repo)
#   KAFKA_HEAP_OPTS       -Xms256m -Xmx512m
#   KAFKA_JVM_OPTS        extra JVM flags for the broker (default: none)
#   KAFKA_START_TIMEOUT   90       seconds to wait for readiness
#   KAFKA_STOP_TIMEOUT    30       seconds before stop escalates to SIGKILL
#   KAFKA_EXTRA_CONFIG    extra server.properties lines ("key=value", newline
#                         separated), appended last so they override the defaults
#   KAFKA_MVN_ARGS        extra arguments for mvn during fetch (e.g. -s settings.xml)
#   JAVA_HOME             used if set, else `java` from PATH
#
# Several brokers can run side by side with different KAFKA_PORT /
# KAFKA_CONTROLLER_PORT (the default data dir follows KAFKA_PORT).

set -euo pipefail

# ---------------------------------------------------------------- settings --
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RES_DIR="$SCRIPT_DIR/kafka"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
KAFKA_HOST=127.0.0.1
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
_home="${HOME:-/tmp}"
KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-${XDG_STATE_HOME:-$_home/.local/state}/event-ingestor/kafka-$KAFKA_PORT}"
EVENT_INGESTOR_CACHE="${EVENT_INGESTOR_CACHE:-${XDG_CACHE_HOME:-$_home/.cache}/event-ingestor}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_EXTRA_CONFIG="${KAFKA_EXTRA_CONFIG:-}"
KAFKA_MVN_ARGS="${KAFKA_MVN_ARGS:-}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

PROBE_TOPIC=_event_ingestor_probe
BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"

# ----------------------------------------------------------------- helpers --
log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
  # Print the comment block at the top of this file.
  sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

now_ms() { date +%s%3N; }
elapsed() { # $1 = start ms -> "12.3s"
  local d=$(( $(now_ms) - $1 ))
  printf '%d.%ds' $((d / 1000)) $(((d % 1000) / 100))
}

validate_settings() {
  is_uint "$KAFKA_PORT" || die "KAFKA_PORT must be a number, got '$KAFKA_PORT'"
  is_uint "$KAFKA_CONTROLLER_PORT" || die "KAFKA_CONTROLLER_PORT must be a number, got '$KAFKA_CONTROLLER_PORT'"
  [[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"
  is_uint "$KAFKA_START_TIMEOUT" || die "KAFKA_START_TIMEOUT must be whole seconds, got '$KAFKA_START_TIMEOUT'"
  is_uint "$KAFKA_STOP_TIMEOUT" || die "KAFKA_STOP_TIMEOUT must be whole seconds, got '$KAFKA_STOP_TIMEOUT'"
  [[ "$KAFKA_VERSION" =~ ^[0-9A-Za-z.+-]+$ ]] || die "odd KAFKA_VERSION '$KAFKA_VERSION'"
}

# Absolute path without requiring it to exist.
abspath() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
  esac
}

init_paths() {
  validate_settings
  KAFKA_DATA_DIR="$(abspath "$KAFKA_DATA_DIR")"
  EVENT_INGESTOR_CACHE="$(abspath "$EVENT_INGESTOR_CACHE")"
  case "$EVENT_INGESTOR_CACHE/" in
    "$REPO_ROOT"/*) die "EVENT_INGESTOR_CACHE ($EVENT_INGESTOR_CACHE) is inside the repo; jars must live outside it" ;;
  esac
  DIST_DIR="$EVENT_INGESTOR_CACHE/kafka-$KAFKA_VERSION"
  LIBS_DIR="$DIST_DIR/libs"
  FETCH_MARKER="$DIST_DIR/.fetched"
  CONFIG="$KAFKA_DATA_DIR/server.properties"
  LOG4J_CONFIG="$KAFKA_DATA_DIR/log4j2.properties"
  PID_FILE="$KAFKA_DATA_DIR/kafka.pid"
  OUT_FILE="$KAFKA_DATA_DIR/kafka.out"      # JVM stdout/stderr (crashes, GC errors)
  LOGS_DIR="$KAFKA_DATA_DIR/logs"           # log4j output
  LOG_FILE="$LOGS_DIR/server.log"
  LOG_DIRS="$KAFKA_DATA_DIR/data"           # Kafka log.dirs (the actual topic data)
  PROBE_LOG="$KAFKA_DATA_DIR/probe.log"
}

# Serialise start/stop/kill/reset for one data dir (and fetches for one cache)
# so that concurrent callers ("safe to call twice") don't race each other.
# The lock fd is closed for the broker JVM, so it never inherits the lock.
lock_data_dir() {
  mkdir -p "$KAFKA_DATA_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 8>"$KAFKA_DATA_DIR/.kafka.sh.lock"
    flock -w 600 8 || die "timed out waiting for another kafka.sh on $KAFKA_DATA_DIR"
  fi
}

java_major() {
  local v
  v="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n1)"
  v="${v#1.}"
  printf '%s\n' "${v%%[.+-]*}"
}

require_java() {
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (install a JDK 17+ or set JAVA_HOME)"
  local major
  major="$(java_major)"
  if ! is_uint "$major" || (( major < 17 )); then
    die "Kafka $KAFKA_VERSION needs Java 17+, but '$JAVA' is version '${major:-unknown}'"
  fi
}

classpath() { printf '%s/*' "$LIBS_DIR"; }

# Run a Kafka CLI main class with a small, fast-starting JVM.
run_tool() {
  local cls="$1"; shift
  "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$RES_DIR/tools-log4j2.properties" \
    -cp "$(classpath)" "$cls" "$@"
}

# -------------------------------------------------------------------- fetch --
fetch_is_complete() {
  [[ -f "$FETCH_MARKER" && -d "$LIBS_DIR" ]] || return 1
  [[ "$(cat "$FETCH_MARKER")" == "$(fetch_stamp)" ]]
}

fetch_stamp() {
  printf '%s %s\n' "$KAFKA_VERSION" "$(sha256sum "$RES_DIR/pom.xml" | cut -d' ' -f1)"
}

cmd_fetch() { # $1 = "verbose" to report a cache hit
  if fetch_is_complete; then
    [[ "${1:-}" == verbose ]] && log "jars for Kafka $KAFKA_VERSION already in $LIBS_DIR"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found: Maven 3 is needed to download Kafka $KAFKA_VERSION from Maven Central"
  mkdir -p "$DIST_DIR"
  (
    if command -v flock >/dev/null 2>&1; then
      exec 7>"$DIST_DIR/.fetch.lock"
      flock -w 900 7 || die "timed out waiting for another fetch into $DIST_DIR"
    fi
    fetch_is_complete && exit 0   # someone else fetched while we waited
    local t0 tmp
    t0="$(now_ms)"
    log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS_DIR ..."
    tmp="$DIST_DIR/libs.tmp.$$"
    rm -rf "$tmp" "$DIST_DIR/target"
    # Run Maven on a copy of the pom inside the cache so nothing lands in the repo.
    # Its output goes to fetch.log (Debian's Maven 3.8 prints stray ANSI resets
    # even with -B -q); it is shown only if the fetch fails.
    cp "$RES_DIR/pom.xml" "$DIST_DIR/pom.xml"
    # shellcheck disable=SC2086  # KAFKA_MVN_ARGS is intentionally word-split
    if ! (cd "$DIST_DIR" && mvn -B -q -f pom.xml $KAFKA_MVN_ARGS \
            -Dkafka.version="$KAFKA_VERSION" \
            dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp") >"$DIST_DIR/fetch.log" 2>&1; then
      sed 's/\x1b\[[0-9;]*m//g' "$DIST_DIR/fetch.log" | tail -n 40 >&2
      rm -rf "$tmp"
      die "mvn failed to fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION (is Maven Central reachable? does that version exist?); full output in $DIST_DIR/fetch.log"
    fi
    [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || { rm -rf "$tmp"; die "fetch finished but kafka_2.13-$KAFKA_VERSION.jar is missing"; }
    rm -rf "$LIBS_DIR" "$DIST_DIR/target"
    mv "$tmp" "$LIBS_DIR"
    fetch_stamp >"$FETCH_MARKER"
    log "fetched $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS_DIR" | cut -f1)) in $(elapsed "$t0")"
  )
}

# ------------------------------------------------------------ process state --
# True if $1 is a live (non-zombie) process.
pid_alive() {
  local pid="$1" state
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)"
  [[ "$state" != Z && "$state" != X ]]
}

# True if $1 is our broker: kafka.Kafka running on this data dir's config.
pid_is_our_broker() {
  local pid="$1"
  pid_alive "$pid" || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 0   # no procfs: trust the pid file
  # cmdline is NUL-separated argv; -z makes each argument a "line".
  grep -qzxF -- "$CONFIG" "/proc/$pid/cmdline" 2>/dev/null
}

# Print the pid of our running broker, or fail.
broker_pid() {
  local pid=""
  [[ -f "$PID_FILE" ]] && pid="$(tr -dc '0-9' <"$PID_FILE")"
  if [[ -n "$pid" ]] && pid_is_our_broker "$pid"; then
    printf '%s\n' "$pid"; return 0
  fi
  # Pid file lost or stale: look for a JVM started with exactly our config.
  local f p
  while IFS= read -r f; do
    p="${f#/proc/}"; p="${p%/cmdline}"
    if pid_is_our_broker "$p"; then
      [[ -d "$KAFKA_DATA_DIR" ]] && printf '%s\n' "$p" >"$PID_FILE"
      printf '%s\n' "$p"; return 0
    fi
  done < <(grep -lzxF kafka.Kafka /proc/[0-9]*/cmdline 2>/dev/null || true)
  return 1
}

port_open() { # $1 = port
  timeout 2 bash -c "exec 3<>/dev/tcp/$KAFKA_HOST/$1" 2>/dev/null
}

# Produce one record with acks=all; exit code says whether it was acknowledged.
probe_once() { # $1 = max seconds for this attempt
  local t="$1"
  (( t < 3 )) && t=3
  local block_ms=$(( (t - 1) * 1000 ))
  (( block_ms > 10000 )) && block_ms=10000
  printf 'probe %s\n' "$(date -u +%FT%TZ)" \
    | timeout --kill-after=2 "$t" \
        "$JAVA" -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$RES_DIR/tools-log4j2.properties" \
        -cp "$(classpath)" org.apache.kafka.tools.ConsoleProducer \
        --bootstrap-server "$BOOTSTRAP" --topic "$PROBE_TOPIC" \
        --sync --request-required-acks all \
        --command-property max.block.ms="$block_ms" \
        --command-property request.timeout.ms="$block_ms" \
        --command-property delivery.timeout.ms="$(( block_ms + 1000 ))" \
        --command-property linger.ms=0 \
        >"$PROBE_LOG" 2>&1
}

show_log_tail() {
  local f
  for f in "$OUT_FILE" "$LOG_FILE"; do
    [[ -s "$f" ]] || continue
    printf '\n----- last 50 lines of %s -----\n' "$f" >&2
    tail -n 50 "$f" >&2
  done
  if [[ -s "$PROBE_LOG" ]]; then
    printf '\n----- last readiness probe output (%s) -----\n' "$PROBE_LOG" >&2
    tail -n 15 "$PROBE_LOG" >&2
  fi
  printf -- '-----\n' >&2
}

# Wait until pid $1 accepts an acks=all produce, or fail after KAFKA_START_TIMEOUT.
wait_ready() {
  local pid="$1" deadline remaining
  deadline=$(( $(date +%s) + KAFKA_START_TIMEOUT ))
  while :; do
    if ! pid_alive "$pid"; then
      rm -f "$PID_FILE"
      log "broker process $pid exited during startup"
      show_log_tail
      return 1
    fi
    remaining=$(( deadline - $(date +%s) ))
    if (( remaining <= 0 )); then
      log "broker not ready after ${KAFKA_START_TIMEOUT}s (KAFKA_START_TIMEOUT); it is still running as pid $pid — 'scripts/kafka.sh stop' to stop it"
      show_log_tail
      return 1
    fi
    if port_open "$KAFKA_PORT"; then
      (( remaining > 30 )) && remaining=30
      probe_once "$remaining" && return 0
    fi
    sleep 0.3
  done
}

# ------------------------------------------------------------------- config --
random_cluster_id() {
  # Kafka Uuid format: 16 random bytes, URL-safe base64 without padding (22 chars),
  # and not starting with '-' (Kafka's own generator avoids that too).
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* && ${#id} -eq 22 ]] && { printf '%s\n' "$id"; return; }
  done
}

write_config() {
  mkdir -p "$LOGS_DIR" "$LOG_DIRS"
  cp "$RES_DIR/log4j2.properties" "$LOG4J_CONFIG"
  local tmp="$CONFIG.tmp.$$"
  cat >"$tmp" <<EOF
# Generated by scripts/kafka.sh on every start — edits are overwritten.
# Use KAFKA_EXTRA_CONFIG for extra settings.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$LOG_DIRS

# Single node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1

auto.create.topics.enable=true
num.partitions=3
group.initial.rebalance.delay.ms=0
delete.topic.enable=true

# After a SIGKILL the restarted broker cannot register until the controller has
# expired the dead incarnation's session (DUPLICATE_BROKER_REGISTRATION until
# then). The default 9 s session made restart-after-kill take ~17 s; 4.5 s
# with a 750 ms heartbeat (6 missed beats) keeps it well under 10 s.
broker.session.timeout.ms=4500
broker.heartbeat.interval.ms=750
EOF
  # Later keys win in java.util.Properties, so KAFKA_EXTRA_CONFIG can override the above.
  if [[ -n "$KAFKA_EXTRA_CONFIG" ]]; then
    printf '\n# KAFKA_EXTRA_CONFIG\n%s\n' "$KAFKA_EXTRA_CONFIG" >>"$tmp"
  fi
  mv "$tmp" "$CONFIG"
}

format_if_needed() {
  [[ -f "$LOG_DIRS/meta.properties" ]] && return 0
  local id
  id="$(random_cluster_id)"
  log "formatting storage in $LOG_DIRS (cluster id $id)"
  if ! run_tool kafka.tools.StorageTool format --config "$CONFIG" --cluster-id "$id" >"$KAFKA_DATA_DIR/format.log" 2>&1; then
    cat "$KAFKA_DATA_DIR/format.log" >&2
    die "formatting storage failed (see above)"
  fi
}

# ----------------------------------------------------------------- commands --
cmd_start() {
  local t0 pid
  t0="$(now_ms)"
  lock_data_dir
  if pid="$(broker_pid)"; then
    if port_open "$KAFKA_PORT"; then
      log "already running (pid $pid) at $BOOTSTRAP"
      printf '%s\n' "$BOOTSTRAP"
      return 0
    fi
    log "broker (pid $pid) is running but not reachable yet; waiting for it"
    wait_ready "$pid" || exit 1
    log "ready at $BOOTSTRAP (pid $pid) after $(elapsed "$t0")"
    printf '%s\n' "$BOOTSTRAP"
    return 0
  fi
  require_java
  cmd_fetch
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_open "$p"; then
      die "port $KAFKA_HOST:$p is already in use by another process (not the broker of $KAFKA_DATA_DIR); pick another KAFKA_PORT / KAFKA_CONTROLLER_PORT"
    fi
  done
  write_config
  format_if_needed
  rm -f "$PID_FILE" "$PROBE_LOG"
  # Start in its own session so it outlives this script and its terminal;
  # `exec` keeps the pid written to the pid file equal to the JVM's pid.
  # The lock fd 8 is closed so the broker never holds the kafka.sh lock.
  # shellcheck disable=SC2086,SC2016  # heap/JVM opts are intentionally word-split; $$ expands in the child
  nohup setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' kafka-launch "$PID_FILE" \
    "$JAVA" $KAFKA_HEAP_OPTS \
      -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      $KAFKA_JVM_OPTS \
      -Dkafka.logs.dir="$LOGS_DIR" -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
      -cp "$(classpath)" kafka.Kafka "$CONFIG" \
    </dev/null >"$OUT_FILE" 2>&1 8>&- &
  local launcher=$!
  # Wait for the launcher to record the pid.
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "$PID_FILE" ]] && break
    sleep 0.1
  done
  pid="$(tr -dc '0-9' <"$PID_FILE" 2>/dev/null || true)"
  [[ -n "$pid" ]] || pid="$launcher"
  log "started Kafka $KAFKA_VERSION (pid $pid), data in $KAFKA_DATA_DIR; waiting for an acks=all produce to succeed ..."
  wait_ready "$pid" || exit 1
  log "ready at $BOOTSTRAP (pid $pid) after $(elapsed "$t0")"
  printf '%s\n' "$BOOTSTRAP"
}

# $1 = signal escalation: "graceful" or "kill"
stop_broker() {
  local mode="$1" pid t0 deadline
  if [[ ! -d "$KAFKA_DATA_DIR" ]]; then
    log "not running (no data dir $KAFKA_DATA_DIR)"
    return 0
  fi
  lock_data_dir
  if ! pid="$(broker_pid)"; then
    rm -f "$PID_FILE"
    log "not running (data dir $KAFKA_DATA_DIR)"
    return 0
  fi
  t0="$(now_ms)"
  if [[ "$mode" == kill ]]; then
    log "sending SIGKILL to broker pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$(( $(date +%s) + 10 ))
  else
    log "stopping broker pid $pid (SIGTERM, SIGKILL after ${KAFKA_STOP_TIMEOUT}s)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(( $(date +%s) + KAFKA_STOP_TIMEOUT ))
  fi
  while pid_alive "$pid"; do
    if (( $(date +%s) >= deadline )); then
      if [[ "$mode" == kill ]]; then
        die "pid $pid still alive 10s after SIGKILL"
      fi
      log "still running after ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      mode="kill"
      deadline=$(( $(date +%s) + 10 ))
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
  log "stopped (pid $pid) in $(elapsed "$t0")"
}

cmd_status() {
  local pid
  if ! pid="$(broker_pid)"; then
    log "not running (data dir $KAFKA_DATA_DIR)"
    return 3
  fi
  if port_open "$KAFKA_PORT"; then
    log "running (pid $pid) at $BOOTSTRAP, data dir $KAFKA_DATA_DIR"
    printf '%s\n' "$BOOTSTRAP"
    return 0
  fi
  log "process $pid is running but $BOOTSTRAP does not accept connections"
  return 1
}

cmd_probe() {
  [[ -d "$LIBS_DIR" ]] || die "jars not fetched yet (run: scripts/kafka.sh fetch)"
  mkdir -p "$KAFKA_DATA_DIR"
  if probe_once 20; then
    log "produce with acks=all to $BOOTSTRAP/$PROBE_TOPIC succeeded"
  else
    tail -n 15 "$PROBE_LOG" >&2 || true
    die "produce to $BOOTSTRAP failed"
  fi
}

cmd_logs() {
  local follow="" lines=100
  while (( $# )); do
    case "$1" in
      -f|--follow) follow=1 ;;
      -n) shift; lines="${1:?-n needs a number}" ;;
      *) die "logs: unknown option '$1' (use -f, -n N)" ;;
    esac
    shift
  done
  log "broker log: $LOG_FILE (JVM output: $OUT_FILE)"
  [[ -f "$LOG_FILE" ]] || { log "no log yet"; return 0; }
  if [[ -n "$follow" ]]; then
    tail -n "$lines" -F "$LOG_FILE"
  else
    tail -n "$lines" "$LOG_FILE"
  fi
}

cmd_topics() {
  cmd_fetch
  run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" "$@"
}

cmd_run_class() {
  (( $# )) || die "run-class needs a main class, e.g. org.apache.kafka.tools.consumer.ConsoleConsumer"
  cmd_fetch
  run_tool "$@"
}

cmd_reset() {
  stop_broker graceful
  if [[ -d "$KAFKA_DATA_DIR" ]]; then
    # Guard against a mistyped KAFKA_DATA_DIR: only wipe dirs that look like ours.
    if [[ -f "$CONFIG" || -z "$(find "$KAFKA_DATA_DIR" -mindepth 1 -maxdepth 1 ! -name .kafka.sh.lock -print -quit)" ]]; then
      rm -rf "$KAFKA_DATA_DIR"
      log "deleted $KAFKA_DATA_DIR"
    else
      die "$KAFKA_DATA_DIR does not look like a kafka.sh data dir (no server.properties); not deleting it"
    fi
  fi
}

cmd_env() {
  cat <<EOF
KAFKA_VERSION=$KAFKA_VERSION
KAFKA_BOOTSTRAP=$BOOTSTRAP
KAFKA_PORT=$KAFKA_PORT
KAFKA_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT
KAFKA_DATA_DIR=$KAFKA_DATA_DIR
EVENT_INGESTOR_CACHE=$EVENT_INGESTOR_CACHE
KAFKA_LIBS=$LIBS_DIR
KAFKA_LOG=$LOG_FILE
KAFKA_HEAP_OPTS=$KAFKA_HEAP_OPTS
KAFKA_START_TIMEOUT=$KAFKA_START_TIMEOUT
KAFKA_STOP_TIMEOUT=$KAFKA_STOP_TIMEOUT
EOF
}

main() {
  local cmd="${1:-}"
  (( $# )) && shift
  case "$cmd" in
    -h|--help|help) usage; return 0 ;;
    "") usage; return 2 ;;
  esac
  init_paths
  case "$cmd" in
    start)     cmd_start ;;
    stop)      stop_broker graceful ;;
    restart)   stop_broker graceful; exec 8>&-; cmd_start ;;
    kill)      stop_broker kill ;;
    status)    cmd_status ;;
    probe)     cmd_probe ;;
    fetch)     require_java; cmd_fetch verbose ;;
    logs)      cmd_logs "$@" ;;
    topics)    cmd_topics "$@" ;;
    run-class) cmd_run_class "$@" ;;
    reset)     cmd_reset ;;
    env)       cmd_env ;;
    *) log "unknown command '$cmd'"; usage; return 2 ;;
  esac
}

main "$@"
