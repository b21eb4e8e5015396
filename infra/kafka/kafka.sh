#!/usr/bin/env bash
# Runs Apache Kafka natively in KRaft mode from the jars that pom.xml pins.
#
#   infra/kafka/kafka.sh start|stop|status [single|cluster]
#
# single  one combined broker+controller on 127.0.0.1:9092 (controller 9093)
# cluster three combined nodes on 127.0.0.1:19092,19093,19094 (controllers 19192-19194),
#         replication factor 3 and min.insync.replicas 2, for the fault tests
#
# The jars are resolved from Maven Central once into .cache/kafka/<pom hash>/libs;
# data, logs and pids live under .run/kafka/<mode>/ (both git-ignored).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$root/infra/maven.sh"
action="${1:-status}"
mode="${2:-single}"

case "$mode" in
  single) nodes=(1) ;;
  cluster) nodes=(1 2 3) ;;
  *) echo "kafka.sh: unknown mode '$mode' (expected single or cluster)" >&2; exit 2 ;;
esac

run_dir="${SWITCHBOARD_RUN_DIR:-$root/.run}/kafka/$mode"
heap="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
java_bin="${KAFKA_JAVA:-java}"

broker_port() { if [ "$mode" = single ]; then echo 9092; else echo $((19091 + $1)); fi; }
controller_port() { if [ "$mode" = single ]; then echo 9093; else echo $((19191 + $1)); fi; }

bootstrap() {
  local out="" n
  for n in "${nodes[@]}"; do out="${out:+$out,}127.0.0.1:$(broker_port "$n")"; done
  echo "$out"
}

resolve_jars() {
  libs="$root/.cache/kafka/$(file_key "$here/pom.xml")/libs"
  maven_resolve kafka "$here/pom.xml" "$libs" dependency:copy-dependencies -DincludeScope=runtime
}

write_config() {
  local n=$1 dir=$2 voters="" v rf=1 isr=1
  for v in "${nodes[@]}"; do voters="${voters:+$voters,}$v@127.0.0.1:$(controller_port "$v")"; done
  if [ "$mode" = cluster ]; then rf=3; isr=2; fi
  cat >"$dir/server.properties" <<EOF
# Written by infra/kafka/kafka.sh; edits are overwritten at the next start.
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(broker_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(broker_port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
# Topics come from the catalog (switchboard topics create), never from a typo.
auto.create.topics.enable=false
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
num.partitions=1
log.segment.bytes=67108864
EOF
}

node_pid() {
  local pidfile="$run_dir/node$1/kafka.pid"
  [ -f "$pidfile" ] || return 1
  local pid
  pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  started=()
  resolve_jars
  mkdir -p "$run_dir"
  [ -f "$run_dir/cluster.id" ] ||
    "$java_bin" -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 >"$run_dir/cluster.id"
  local cluster_id n dir
  cluster_id="$(cat "$run_dir/cluster.id")"
  for n in "${nodes[@]}"; do
    dir="$run_dir/node$n"
    if node_pid "$n" >/dev/null; then continue; fi
    started+=("$n")
    if port_open "$(broker_port "$n")"; then
      echo "kafka: port $(broker_port "$n") is taken by a process this script did not start" >&2
      exit 1
    fi
    mkdir -p "$dir"
    write_config "$n" "$dir"
    # -g: an already formatted directory is left as it is, so data survives restarts.
    "$java_bin" -cp "$libs/*" kafka.tools.StorageTool format -g \
      -t "$cluster_id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 ||
      { cat "$dir/format.log" >&2; exit 1; }
    # setsid: Ctrl-C in the terminal that ran `make run` must not reach the broker
    # before the workers have stopped; the caller stops it explicitly.
    setsid "$java_bin" $heap -XX:+UseG1GC -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$dir" \
      -cp "$libs/*" kafka.Kafka "$dir/server.properties" >"$dir/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/kafka.pid"
  done
  wait_ready
  echo "kafka: $mode up on $(bootstrap)"
}

# A node started now is ready once its log says so and its port answers; one that was
# already running only needs its port (its log may have rolled past the start line).
wait_ready() {
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90})) n
  for n in "${nodes[@]}"; do
    until { [[ " ${started[*]} " != *" $n "* ]] ||
      grep -q "Kafka Server started" "$run_dir/node$n/server.log" 2>/dev/null; } &&
      port_open "$(broker_port "$n")"; do
      if ! node_pid "$n" >/dev/null; then
        echo "kafka: node $n exited during start; last lines of its log:" >&2
        tail -n 30 "$run_dir/node$n/server.log" "$run_dir/node$n/stdout.log" >&2 2>/dev/null || true
        exit 1
      fi
      if [ $SECONDS -ge $deadline ]; then
        echo "kafka: node $n did not answer within ${KAFKA_START_TIMEOUT:-90}s" >&2
        exit 1
      fi
      sleep 0.3
    done
  done
}

stop() {
  local n pid deadline
  for n in "${nodes[@]}"; do
    pid="$(node_pid "$n")" || continue
    kill -TERM "$pid" 2>/dev/null || true
  done
  for n in "${nodes[@]}"; do
    pid="$(node_pid "$n")" || { rm -f "$run_dir/node$n/kafka.pid"; continue; }
    # A controlled shutdown moves leadership away first; give it time before SIGKILL.
    deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$run_dir/node$n/kafka.pid"
  done
  echo "kafka: $mode stopped"
}

status() {
  local n up=0
  for n in "${nodes[@]}"; do
    if pid="$(node_pid "$n")"; then
      echo "kafka: node $n up (pid $pid) on 127.0.0.1:$(broker_port "$n")"
      up=$((up + 1))
    else
      echo "kafka: node $n down"
    fi
  done
  [ "$up" -eq "${#nodes[@]}" ]
}

case "$action" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  bootstrap) bootstrap ;;
  resolve) resolve_jars ;;
  *) echo "usage: kafka.sh start|stop|status|bootstrap|resolve [single|cluster]" >&2; exit 2 ;;
esac
