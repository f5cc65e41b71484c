#!/usr/bin/env bash
# The local attnmon stack: an Apache Kafka broker (KRaft, one node that is both
# broker and controller), Prometheus and Alertmanager, all on loopback, all
# state under var/ in the repository.
#
#   deploy/stack.sh install                  system packages + Kafka jars + the Kubernetes
#                                            manifests' validator (deploy/k8s/validate.sh; idempotent)
#   deploy/stack.sh start  [SERVICE|all]     start and wait until ready (default: all)
#   deploy/stack.sh stop   [SERVICE|all]     SIGTERM, wait, SIGKILL after a timeout
#   deploy/stack.sh status [SERVICE|all]     exit 0 only if every one asked for is ready
#   deploy/stack.sh reload prometheus|alertmanager   re-read the config files
#   deploy/stack.sh logs   SERVICE           tail the service's log
#   deploy/stack.sh reset                    stop all and delete their data (keeps jars)
#
# SERVICE is kafka, prometheus or alertmanager. Environment (defaults):
#   ATTNMON_KAFKA_PORT=19092  ATTNMON_KAFKA_CONTROLLER_PORT=19093
#   ATTNMON_PROMETHEUS_PORT=19090  ATTNMON_ALERTMANAGER_PORT=19094
#   ATTNMON_PROMETHEUS_CONFIG=deploy/prometheus/prometheus.yml
#   ATTNMON_ALERTMANAGER_CONFIG=alerts/alertmanager.yml
#   ATTNMON_STACK_TIMEOUT=90 (seconds to become ready)  ATTNMON_STOP_TIMEOUT=30
#   ATTNMON_KAFKA_HEAP=512m  ATTNMON_PYTHON=.venv/bin/python (Kafka readiness probe)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAR="$ROOT/var"
SERVICES=(kafka alertmanager prometheus)   # start order; stop goes in reverse

KAFKA_PORT="${ATTNMON_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${ATTNMON_KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HEAP="${ATTNMON_KAFKA_HEAP:-512m}"
KAFKA_POM="$ROOT/deploy/kafka/pom.xml"
KAFKA_LIBS="$VAR/kafka/libs"
PROMETHEUS_PORT="${ATTNMON_PROMETHEUS_PORT:-19090}"
ALERTMANAGER_PORT="${ATTNMON_ALERTMANAGER_PORT:-19094}"
READY_TIMEOUT="${ATTNMON_STACK_TIMEOUT:-90}"
STOP_TIMEOUT="${ATTNMON_STOP_TIMEOUT:-30}"
PYTHON="${ATTNMON_PYTHON:-$ROOT/.venv/bin/python}"

# Config paths from the environment are taken relative to the caller's cwd.
abspath() { [[ $1 == /* ]] && printf '%s\n' "$1" || printf '%s\n' "$PWD/$1"; }
PROMETHEUS_CONFIG="$(abspath "${ATTNMON_PROMETHEUS_CONFIG:-$ROOT/deploy/prometheus/prometheus.yml}")"
ALERTMANAGER_CONFIG="$(abspath "${ATTNMON_ALERTMANAGER_CONFIG:-$ROOT/alerts/alertmanager.yml}")"

# ---------------------------------------------------------------- helpers

log() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

port_of() {
  case $1 in
    kafka) echo "$KAFKA_PORT" ;;
    prometheus) echo "$PROMETHEUS_PORT" ;;
    alertmanager) echo "$ALERTMANAGER_PORT" ;;
  esac
}
# Every port a service listens on.
ports_of() {
  case $1 in
    kafka) echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT" ;;
    *) port_of "$1" ;;
  esac
}
log_file() { echo "$VAR/$1/log/$1.log"; }
pid_file() { echo "$VAR/$1/$1.pid"; }

# What this start-up wrote: the console output since the last start marker
# and, for Kafka, the broker log since launch.
show_log_tail() {
  local svc=$1 console server offset lines
  console="$(log_file "$svc")"
  log "$svc console output ($console):"
  awk '/^==== .* starting /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$console" 2>/dev/null |
    tail -n 40 >&2 || true
  server="$VAR/kafka/log/server.log"
  if [[ $svc == kafka && -f $server ]]; then
    offset="$(cat "$VAR/kafka/server.log.offset" 2>/dev/null || echo 0)"
    (($(stat -c %s "$server") >= offset)) || offset=0
    lines="$(tail -c +"$((offset + 1))" "$server" | tail -n 30)" || true
    if [[ -n $lines ]]; then
      log "broker log since launch ($server):"
      printf '%s\n' "$lines" >&2
    fi
  fi
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

http_ok() { curl -fsS --max-time 2 -o /dev/null "$1" 2>/dev/null; }

# True if $1 is a live process (zombies count as dead) whose command line
# mentions this repository's var/<service>/, so a recycled pid is never ours.
pid_is_ours() {
  local pid=$1 svc=$2 state
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
  state="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [[ -n $state && $state != Z && $state != X ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$VAR/$svc/"
}

# Prints the pid of the running service, or fails (and drops a stale pid file).
running_pid() {
  local svc=$1 file pid
  file="$(pid_file "$svc")"
  [[ -f $file ]] || return 1
  pid="$(<"$file")"
  if pid_is_ours "$pid" "$svc"; then
    echo "$pid"
  else
    rm -f "$file"
    return 1
  fi
}

ready() {
  case $1 in
    kafka) kafka_ready ;;
    prometheus) http_ok "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" ;;
    alertmanager) http_ok "http://127.0.0.1:$ALERTMANAGER_PORT/-/ready" ;;
  esac
}

# Starts "$@" in its own session, detached from this shell, output to $2.
launch() {
  local svc=$1 out=$2
  shift 2
  mkdir -p "$(dirname "$out")"
  printf '\n==== %s starting %s\n' "$(date -Is)" "$svc" >>"$out"
  setsid "$@" >>"$out" 2>&1 </dev/null &
  echo $! >"$(pid_file "$svc")"
}

refuse_busy_port() {
  if port_open "$1"; then
    die "$2: port 127.0.0.1:$1 is already in use by another process (not started by this script); stop it or set the port variable (see deploy/stack.sh header)"
  fi
}

apt_install() {
  local sudo=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root (or sudo) to apt-get install: $*"
    sudo=(sudo)
  fi
  log "apt-get install $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

java_major() {
  java -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p'
}

# ---------------------------------------------------------------- install

cmd_install() {
  local pkgs=()
  command -v curl >/dev/null || pkgs+=(curl ca-certificates)
  command -v java >/dev/null || pkgs+=(default-jre-headless)
  command -v mvn >/dev/null || pkgs+=(maven)
  { command -v prometheus && command -v promtool; } >/dev/null || pkgs+=(prometheus)
  { command -v prometheus-alertmanager && command -v amtool; } >/dev/null || pkgs+=(prometheus-alertmanager)
  # Debian's python3 has no venv module without python3-venv; the Makefile needs it.
  python3 -c 'import ensurepip, venv' 2>/dev/null || pkgs+=(python3-venv)
  # A producer that is not kafka-python (librdkafka, every codec): the integration tests use it.
  command -v kcat >/dev/null || pkgs+=(kcat)
  # Headless Chromium: the browser test renders the demo's live page and screenshots it.
  command -v chromium >/dev/null || pkgs+=(chromium)
  if ((${#pkgs[@]})); then
    # On a host with systemd the packages also enable their own system
    # services (ports 9090/9093); ours use other ports and data dirs.
    apt_install "${pkgs[@]}"
  else
    log "system packages present (java, mvn, prometheus, promtool, prometheus-alertmanager, kcat, chromium)"
  fi
  local major
  major="$(java_major)"
  [[ -n $major && $major -ge 17 ]] || die "Kafka 4 needs Java 17 or newer; 'java' is version ${major:-unknown}"
  install_kafka_libs
  # kubeconform and the Kubernetes / prometheus-operator schemas, for the manifests' test.
  "$ROOT/deploy/k8s/validate.sh" install
}

install_kafka_libs() {
  local stamp="$KAFKA_LIBS/.complete"
  if [[ -f $stamp && $stamp -nt $KAFKA_POM ]]; then
    log "kafka jars present in ${KAFKA_LIBS#"$ROOT"/} ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars)"
    return
  fi
  log "fetching kafka broker jars with maven (deploy/kafka/pom.xml)"
  rm -rf "$KAFKA_LIBS.tmp"
  mkdir -p "$VAR/kafka"
  if ! mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.tmp" >"$VAR/kafka/maven.log" 2>&1; then
    tail -n 40 "$VAR/kafka/maven.log" >&2
    die "maven could not fetch the kafka jars (is Maven Central reachable?); full output in var/kafka/maven.log"
  fi
  rm -rf "$KAFKA_LIBS"
  mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
  date -Is >"$stamp"
  local broker=("$KAFKA_LIBS"/kafka_2.13-*.jar)
  log "kafka jars in ${KAFKA_LIBS#"$ROOT"/} (broker: ${broker[0]##*/})"
}

# ---------------------------------------------------------------- kafka

# java plus the broker's JVM options; a main class and its arguments follow.
KAFKA_JAVA=(
  java -Xms128m "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$ROOT/deploy/kafka/log4j2.xml"
  "-Dkafka.logs.dir=$VAR/kafka/log"
  -cp "$KAFKA_LIBS/*"
)

write_kafka_properties() {
  cat >"$VAR/kafka/server.properties" <<EOF
# Written by deploy/stack.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$VAR/kafka/data
num.network.threads=2
num.io.threads=4
num.partitions=1
auto.create.topics.enable=true
delete.topic.enable=true
# One node: every internal topic has a single replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fast, small groups for tests: no initial join delay, short sessions allowed.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
log.retention.hours=48
log.segment.bytes=67108864
EOF
}

format_kafka_storage() {
  local data="$VAR/kafka/data" id_file="$VAR/kafka/cluster.id" ports_file="$VAR/kafka/controller.port"
  if [[ -f $data/meta.properties ]]; then
    # The controller's address is part of the formatted voter set.
    if [[ -f $ports_file && "$(<"$ports_file")" != "$KAFKA_CONTROLLER_PORT" ]]; then
      die "kafka storage was formatted for controller port $(<"$ports_file"), not $KAFKA_CONTROLLER_PORT; use that port or 'deploy/stack.sh reset' to start afresh"
    fi
    return
  fi
  if [[ ! -s $id_file ]]; then
    "${KAFKA_JAVA[@]}" kafka.tools.StorageTool random-uuid | tail -n 1 >"$id_file"
  fi
  log "formatting kafka storage (cluster id $(<"$id_file"))"
  mkdir -p "$data"
  "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format --standalone -t "$(<"$id_file")" \
    -c "$VAR/kafka/server.properties" >>"$(log_file kafka)" 2>&1 ||
    die "kafka storage format failed; see $(log_file kafka)"
  echo "$KAFKA_CONTROLLER_PORT" >"$ports_file"
}

# Port answers and a metadata request works (kafka-python from .venv when it
# is there; otherwise the broker's own "started" log line).
kafka_ready() {
  port_open "$KAFKA_PORT" || return 1
  if [[ -x $PYTHON ]] && "$PYTHON" -c 'import kafka' 2>/dev/null; then
    "$PYTHON" - "127.0.0.1:$KAFKA_PORT" <<'EOF' >/dev/null 2>&1
import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=5000,
                         bootstrap_timeout_ms=5000, client_id="attnmon-stack-probe")
try:
    admin.describe_cluster()
    admin.list_topics()
finally:
    admin.close()
EOF
  else
    grep -q 'Kafka Server started' "$VAR/kafka/log/server.log" 2>/dev/null
  fi
}

launch_kafka() {
  [[ -f $KAFKA_LIBS/.complete ]] || die "kafka jars missing; run: deploy/stack.sh install"
  refuse_busy_port "$KAFKA_PORT" kafka
  refuse_busy_port "$KAFKA_CONTROLLER_PORT" "kafka controller"
  mkdir -p "$VAR/kafka/log"
  write_kafka_properties
  format_kafka_storage
  stat -c %s "$VAR/kafka/log/server.log" >"$VAR/kafka/server.log.offset" 2>/dev/null ||
    echo 0 >"$VAR/kafka/server.log.offset"
  launch kafka "$(log_file kafka)" "${KAFKA_JAVA[@]}" kafka.Kafka "$VAR/kafka/server.properties"
}

# ---------------------------------------------------------------- prometheus, alertmanager

launch_prometheus() {
  [[ -f $PROMETHEUS_CONFIG ]] || die "prometheus config not found: $PROMETHEUS_CONFIG"
  promtool check config "$PROMETHEUS_CONFIG" >/dev/null 2>&1 ||
    { promtool check config "$PROMETHEUS_CONFIG" >&2 || true; die "invalid prometheus config (or rule files): $PROMETHEUS_CONFIG"; }
  if [[ $PROMETHEUS_CONFIG == "$ROOT/deploy/prometheus/prometheus.yml" ]] &&
    [[ $PROMETHEUS_PORT != 19090 || $ALERTMANAGER_PORT != 19094 ]]; then
    log "warning: the shipped prometheus.yml names ports 19090/19094; set ATTNMON_PROMETHEUS_CONFIG to a copy that names yours"
  fi
  refuse_busy_port "$PROMETHEUS_PORT" prometheus
  mkdir -p "$VAR/prometheus/data" "$VAR/prometheus/targets"  # targets: file_sd (prometheus.yml)
  launch prometheus "$(log_file prometheus)" \
    prometheus \
    "--config.file=$PROMETHEUS_CONFIG" \
    "--storage.tsdb.path=$VAR/prometheus/data" \
    --storage.tsdb.retention.time=7d \
    "--web.listen-address=127.0.0.1:$PROMETHEUS_PORT" \
    --web.enable-lifecycle
}

launch_alertmanager() {
  [[ -f $ALERTMANAGER_CONFIG ]] || die "alertmanager config not found: $ALERTMANAGER_CONFIG"
  amtool check-config "$ALERTMANAGER_CONFIG" >/dev/null 2>&1 ||
    { amtool check-config "$ALERTMANAGER_CONFIG" >&2 || true; die "invalid alertmanager config: $ALERTMANAGER_CONFIG"; }
  refuse_busy_port "$ALERTMANAGER_PORT" alertmanager
  mkdir -p "$VAR/alertmanager/data"
  launch alertmanager "$(log_file alertmanager)" \
    prometheus-alertmanager \
    "--config.file=$ALERTMANAGER_CONFIG" \
    "--storage.path=$VAR/alertmanager/data" \
    "--web.listen-address=127.0.0.1:$ALERTMANAGER_PORT" \
    --cluster.listen-address=
}

# ---------------------------------------------------------------- start / stop / status

# Waits until every service in "$@" is ready; all share one deadline.
await_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT)) pending=("$@") left svc pid
  while ((${#pending[@]})); do
    left=()
    for svc in "${pending[@]}"; do
      if ! pid="$(running_pid "$svc")"; then
        log "$svc exited during start-up"
        show_log_tail "$svc"
        die "$svc did not start"
      fi
      if ready "$svc"; then
        log "$svc ready on 127.0.0.1:$(port_of "$svc") (pid $pid)"
      else
        left+=("$svc")
      fi
    done
    pending=("${left[@]+"${left[@]}"}")
    ((${#pending[@]})) || break
    if ((SECONDS >= deadline)); then
      for svc in "${pending[@]}"; do
        log "$svc not ready after ${READY_TIMEOUT}s"
        show_log_tail "$svc"
      done
      die "not ready after ${READY_TIMEOUT}s: ${pending[*]} (still running; 'deploy/stack.sh stop' to clean up)"
    fi
    sleep 0.5
  done
}

cmd_start() {
  local svc pid started=()
  for svc in "$@"; do
    if pid="$(running_pid "$svc")"; then
      log "$svc already running (pid $pid)"
    else
      "launch_$svc"
    fi
    started+=("$svc")
  done
  await_ready "${started[@]}"
}

stop_one() {
  local svc=$1 pid deadline
  if ! pid="$(running_pid "$svc")"; then
    log "$svc not running"
    return
  fi
  log "stopping $svc (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while pid_is_ours "$pid" "$svc" && ((SECONDS < deadline)); do sleep 0.2; done
  if pid_is_ours "$pid" "$svc"; then
    log "$svc did not exit within ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while pid_is_ours "$pid" "$svc" && ((SECONDS < deadline)); do sleep 0.2; done
    pid_is_ours "$pid" "$svc" && die "$svc (pid $pid) survived SIGKILL"
  fi
  # If it was our child (same shell), reap it so no zombie is left behind.
  wait "$pid" 2>/dev/null || true
  rm -f "$(pid_file "$svc")"
  # A killed JVM's leader thread turns zombie before its other threads are gone;
  # the service is stopped once its ports are free.
  local port
  for port in $(ports_of "$svc"); do
    deadline=$((SECONDS + 10))
    while port_open "$port" && ((SECONDS < deadline)); do sleep 0.2; done
    port_open "$port" && die "$svc exited but 127.0.0.1:$port still answers"
  done
  log "$svc stopped"
}

cmd_stop() {
  local i
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    [[ " $* " == *" ${SERVICES[i]} "* ]] && stop_one "${SERVICES[i]}"
  done
  return 0
}

cmd_status() {
  local svc pid rc=0 state
  for svc in "$@"; do
    if pid="$(running_pid "$svc")"; then
      if ready "$svc"; then state=ready; else state="NOT READY"; rc=3; fi
      printf '%-13s running  pid %-7s 127.0.0.1:%-6s %s\n' "$svc" "$pid" "$(port_of "$svc")" "$state"
    else
      printf '%-13s stopped\n' "$svc"
      rc=3
    fi
  done
  return "$rc"
}

cmd_reload() {
  local svc=${1:-}
  case $svc in
    prometheus | alertmanager) ;;
    *) die "usage: deploy/stack.sh reload prometheus|alertmanager" ;;
  esac
  running_pid "$svc" >/dev/null || die "$svc is not running"
  curl -fsS --max-time 10 -X POST "http://127.0.0.1:$(port_of "$svc")/-/reload" ||
    die "$svc rejected the reload; see $(log_file "$svc")"
  log "$svc reloaded"
}

cmd_reset() {
  cmd_stop "${SERVICES[@]}"
  log "deleting service data under var/ (kafka jars kept)"
  rm -rf "$VAR/kafka/data" "$VAR/kafka/cluster.id" "$VAR/kafka/controller.port" \
    "$VAR/kafka/server.properties" "$VAR/kafka/server.log.offset" "$VAR/kafka/log" \
    "$VAR/prometheus" "$VAR/alertmanager"
}

# Expands "all" / nothing to every service and rejects unknown names.
services_from_args() {
  local arg svc
  if (($# == 0)); then set -- all; fi
  for arg in "$@"; do
    if [[ $arg == all ]]; then
      printf '%s\n' "${SERVICES[@]}"
      continue
    fi
    for svc in "${SERVICES[@]}"; do
      [[ $arg == "$svc" ]] && { echo "$svc"; continue 2; }
    done
    die "unknown service '$arg' (kafka, prometheus, alertmanager or all)"
  done
}

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

main() {
  local cmd=${1:-help} svcs
  shift || true
  case $cmd in
    install) cmd_install ;;
    start | stop | status)
      svcs="$(services_from_args "$@")" || exit 1
      mapfile -t svcs <<<"$svcs"
      # Keep the canonical order whatever order the caller gave.
      local ordered=() svc
      for svc in "${SERVICES[@]}"; do
        [[ " ${svcs[*]} " == *" $svc "* ]] && ordered+=("$svc")
      done
      "cmd_$cmd" "${ordered[@]}"
      ;;
    reload) cmd_reload "$@" ;;
    logs)
      [[ $# -eq 1 ]] || die "usage: deploy/stack.sh logs SERVICE"
      services_from_args "$1" >/dev/null
      tail -n 100 "$(log_file "$1")"
      [[ $1 == kafka ]] && tail -n 100 "$VAR/kafka/log/server.log" 2>/dev/null
      return 0
      ;;
    reset) cmd_reset ;;
    help | -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
