#!/usr/bin/env bash
# Runs Apicurio Registry natively as Switchboard's Confluent-compatible Schema Registry.
#
#   infra/registry/registry.sh start|stop|status|url
#
# Serves on 127.0.0.1:8081; the Confluent API is at /apis/ccompat/v7. The global
# compatibility rule is BACKWARD, so a breaking schema change is refused at register.
# Schemas are kept in an H2 file database under .run/registry/, so schema ids stay
# valid for the Avro data that Kafka keeps across restarts.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$root/infra/maven.sh"
source "$root/infra/pidfile.sh"
action="${1:-status}"
port="${REGISTRY_PORT:-8081}"
run_dir="${SWITCHBOARD_RUN_DIR:-$root/.run}/registry"
pidfile="$run_dir/registry.pid"
url="http://127.0.0.1:$port/apis/ccompat/v7"

# Apicurio 3.3 is built for Java 21+. The machine's default java may be older, so
# take REGISTRY_JAVA, else the newest JDK >= 21 that is installed.
find_java() {
  if [ -n "${REGISTRY_JAVA:-}" ]; then echo "$REGISTRY_JAVA"; return; fi
  local best="" best_major=0 j major
  for j in "$(command -v java 2>/dev/null || true)" /usr/lib/jvm/*/bin/java /opt/java/*/bin/java; do
    [ -x "$j" ] || continue
    major="$("$j" -XshowSettings:properties -version 2>&1 |
      sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')"
    if [ -n "$major" ] && [ "$major" -ge 21 ] && [ "$major" -gt "$best_major" ]; then
      best="$j"; best_major="$major"
    fi
  done
  if [ -z "$best" ]; then
    echo "registry: Apicurio Registry needs Java 21 or newer and none was found;" \
      "install one (e.g. a Temurin 21+ JDK) or set REGISTRY_JAVA to its java binary" >&2
    exit 1
  fi
  echo "$best"
}

resolve_app() {
  app="$root/.cache/registry/$(file_key "$here/pom.xml")"
  # Markers inside the cache: with the default (target/), a re-resolve would skip unpacking.
  maven_resolve registry "$here/pom.xml" "$app" dependency:unpack-dependencies \
    -DmarkersDirectory="$app/.markers"
}

running_pid() { pid_of "$pidfile"; }

answers() { curl -sf -o /dev/null "$url/subjects"; }

start() {
  if running_pid >/dev/null; then
    wait_ready
    echo "registry: up at $url"
    return
  fi
  if answers; then
    echo "registry: something this script did not start already answers on port $port" >&2
    exit 1
  fi
  resolve_app
  local java
  java="$(find_java)"
  mkdir -p "$run_dir"
  # setsid: keep Ctrl-C in the `make run` terminal away from it; the caller stops it.
  setsid "$java" ${REGISTRY_HEAP_OPTS:--Xms128m -Xmx512m} \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
    -Dquarkus.log.category.\"io.quarkus.vertx.http.runtime.filters.accesslog\".level=WARN \
    -Dapicurio.rules.global.compatibility=BACKWARD \
    -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=h2 \
    -Dapicurio.datasource.url="jdbc:h2:file:$run_dir/db/registry" \
    -jar "$app/quarkus-run.jar" >"$run_dir/registry.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_ready
  echo "registry: up at $url"
}

wait_ready() {
  local deadline=$((SECONDS + ${REGISTRY_START_TIMEOUT:-120}))
  until answers; do
    if ! running_pid >/dev/null; then
      echo "registry: exited during start; last lines of its log:" >&2
      tail -n 30 "$run_dir/registry.log" >&2 || true
      exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "registry: did not answer within ${REGISTRY_START_TIMEOUT:-120}s" >&2
      exit 1
    fi
    sleep 0.3
  done
}

status() {
  if pid="$(running_pid)"; then
    echo "registry: up (pid $pid) at $url"
  else
    echo "registry: down"
    return 1
  fi
}

case "$action" in
  start) start ;;
  stop) stop_pid registry "$pidfile" ;;
  status) status ;;
  url) echo "$url" ;;
  resolve) resolve_app ;;
  *) echo "usage: registry.sh start|stop|status|url|resolve" >&2; exit 2 ;;
esac
