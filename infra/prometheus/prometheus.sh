#!/usr/bin/env bash
# Runs Prometheus natively, scraping a native Switchboard (`make run`) with its alerts.
#
#   infra/prometheus/prometheus.sh install|start|stop|status|url
#
# The binary is Debian's `prometheus` package (PROMETHEUS_BIN, else the one on PATH);
# `install` installs the package when it is missing (the tests need its promtool and
# server, so `make infra-up` runs it). Serves on 127.0.0.1:9090 (PROMETHEUS_PORT) with
# infra/prometheus/prometheus.yml (PROMETHEUS_CONFIG); data and log live under
# .run/prometheus/ for two days.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$root/infra/pidfile.sh"
action="${1:-status}"
port="${PROMETHEUS_PORT:-9090}"
config="${PROMETHEUS_CONFIG:-$here/prometheus.yml}"
run_dir="${SWITCHBOARD_RUN_DIR:-$root/.run}/prometheus"
pidfile="$run_dir/prometheus.pid"
url="http://127.0.0.1:$port"

find_bin() {
  bin="${PROMETHEUS_BIN:-$(command -v prometheus 2>/dev/null || true)}"
  [ -n "$bin" ] && [ -x "$bin" ]
}

install() {
  if find_bin && command -v promtool >/dev/null; then return; fi
  if ! command -v apt-get >/dev/null; then
    echo "prometheus: not installed and no apt-get here; install Prometheus and promtool," \
      "or set PROMETHEUS_BIN" >&2
    exit 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo -n true 2>/dev/null || {
      echo "prometheus: not installed; run: sudo apt-get install prometheus" >&2
      exit 1
    }
    sudo="sudo -n"
  fi
  echo "prometheus: installing Debian's prometheus package (once)" >&2
  # --no-install-recommends: not the node exporter. The package's own service is not
  # started (no init system here; this script runs its own).
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
  find_bin
}

running_pid() { pid_of "$pidfile"; }

answers() { curl -sf -o /dev/null "$url/-/ready"; }

start() {
  if running_pid >/dev/null; then
    echo "prometheus: up at $url"
    return
  fi
  if answers; then
    echo "prometheus: something this script did not start already answers on port $port" >&2
    exit 1
  fi
  install
  mkdir -p "$run_dir"
  # setsid: keep Ctrl-C in another terminal's `make run` away from it.
  setsid "$bin" --config.file="$config" --storage.tsdb.path="$run_dir/data" \
    --storage.tsdb.retention.time=2d --web.listen-address="127.0.0.1:$port" \
    >"$run_dir/prometheus.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + 30))
  until answers; do
    if ! running_pid >/dev/null; then
      echo "prometheus: exited during start; last lines of its log:" >&2
      tail -n 20 "$run_dir/prometheus.log" >&2 || true
      exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "prometheus: did not answer within 30s" >&2
      exit 1
    fi
    sleep 0.3
  done
  echo "prometheus: up at $url (targets: $url/targets, alerts: $url/alerts)"
}

status() {
  if pid="$(running_pid)"; then
    echo "prometheus: up (pid $pid) at $url"
  else
    echo "prometheus: down"
    return 1
  fi
}

case "$action" in
  install) install ;;
  start) start ;;
  stop) stop_pid prometheus "$pidfile" ;;
  status) status ;;
  url) echo "$url" ;;
  *) echo "usage: prometheus.sh install|start|stop|status|url" >&2; exit 2 ;;
esac
