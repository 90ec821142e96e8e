#!/usr/bin/env bash
# A throwaway 3-node Redis Cluster on 127.0.0.1:7000-7002 for the tests and the bench.
#
#   bash scripts/redis-cluster.sh start    # idempotent: returns once cluster_state is ok
#   bash scripts/redis-cluster.sh status
#   bash scripts/redis-cluster.sh stop
#
# Three primaries, no replicas, no persistence; data lives in a temporary folder that `stop`
# removes. Skipped when KVSESSIONS_TEST_REDIS_CLUSTER_URL names a cluster of your own.
set -euo pipefail

ports=(7000 7001 7002)
host=127.0.0.1
dir=${KVSESSIONS_REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/kvsessions-redis-cluster}

log() { printf '[redis-cluster] %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    log "installing redis-server"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
}

node_up() { redis-cli -h "$host" -p "$1" ping >/dev/null 2>&1; }

cluster_ok() {
  redis-cli -h "$host" -p "${ports[0]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

# Every node knows the other two: the cluster was created (a node alone knows only itself).
cluster_formed() {
  local port known
  for port in "${ports[@]}"; do
    known=$(redis-cli -h "$host" -p "$port" cluster info 2>/dev/null \
      | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p')
    [ "${known:-0}" -ge "${#ports[@]}" ] || return 1
  done
}

start_node() {
  local port=$1
  mkdir -p "$dir/$port"
  redis-server --daemonize yes --bind "$host" --port "$port" \
    --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf" \
    --cluster-node-timeout 5000 --save "" --appendonly no --dir "$dir/$port" \
    --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log"
}

wait_for() {  # wait_for <tries> <command...>
  local tries=$1; shift
  for _ in $(seq 1 "$tries"); do "$@" && return 0; sleep 0.25; done
  return 1
}

start() {
  if [ -n "${KVSESSIONS_TEST_REDIS_CLUSTER_URL:-}" ]; then
    log "KVSESSIONS_TEST_REDIS_CLUSTER_URL is set: using that cluster"; return 0
  fi
  if cluster_ok && cluster_formed; then
    log "cluster ready on $host:${ports[0]}-${ports[-1]}"; return 0
  fi
  install_redis
  local port
  for port in "${ports[@]}"; do
    node_up "$port" || start_node "$port"
  done
  for port in "${ports[@]}"; do
    wait_for 40 node_up "$port" || { log "node $port did not come up (see $dir/$port/redis.log)"; exit 1; }
  done
  if ! cluster_formed; then
    # Nodes that hold slots or data from an earlier, half-made cluster start over empty.
    for port in "${ports[@]}"; do
      redis-cli -h "$host" -p "$port" flushall >/dev/null 2>&1 || true
      redis-cli -h "$host" -p "$port" cluster reset hard >/dev/null
    done
    log "creating the cluster"
    redis-cli --cluster create $(printf "$host:%s " "${ports[@]}") \
      --cluster-replicas 0 --cluster-yes >/dev/null
  fi
  wait_for 120 cluster_ok || { log "cluster_state did not become ok within 30 s"; exit 1; }
  wait_for 40 cluster_formed || { log "the nodes did not all meet within 10 s"; exit 1; }
  log "cluster ready on $host:${ports[0]}-${ports[-1]}"
}

stop() {
  local port
  for port in "${ports[@]}"; do
    if node_up "$port"; then redis-cli -h "$host" -p "$port" shutdown nosave >/dev/null 2>&1 || true; fi
  done
  for port in "${ports[@]}"; do
    wait_for 40 bash -c "! redis-cli -h $host -p $port ping >/dev/null 2>&1" || true
  done
  rm -rf "$dir"
  log "stopped"
}

status() {
  local port
  for port in "${ports[@]}"; do
    if node_up "$port"; then log "node $port up"; else log "node $port down"; fi
  done
  if cluster_ok; then log "cluster_state:ok"; else log "cluster not ok"; return 1; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
