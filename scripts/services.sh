#!/usr/bin/env bash
# Make sure the servers the test suite talks to are installed and running on 127.0.0.1:
# PostgreSQL (5432, trust auth, database "test") and Redis (6379). Idempotent; safe to re-run.
# MongoDB is served by SecantusDB, which the tests start themselves (tests/mongo_server.py).
set -euo pipefail

log() { printf '[services] %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL -------------------------------------------------------------------------------
if [ -z "${KVSESSIONS_TEST_POSTGRES_URL:-}" ]; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing postgresql"
    apt_install postgresql
    fresh_pg=1
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    if [ "${fresh_pg:-0}" = 1 ]; then
      hba=/etc/postgresql/$version/main/pg_hba.conf
      # Loopback-only trust, as on the project's machines: the tests connect without a password.
      sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
      sed -i -E 's/^(local\s+all\s+all\s+)\S+/\1trust/' "$hba"
    fi
    log "starting postgresql $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  fi
  for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  pg_isready -q -h 127.0.0.1 -p 5432 || { log "postgresql did not come up"; exit 1; }
  if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test' >/dev/null
  fi
  log "postgresql ready on 127.0.0.1:5432"
fi

# --- Redis ------------------------------------------------------------------------------------
if [ -z "${KVSESSIONS_TEST_REDIS_URL:-}" ]; then
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server"
    apt_install redis-server
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp --logfile /tmp/kvsessions-redis.log
  fi
  for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.25; done
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { log "redis did not come up"; exit 1; }
  log "redis ready on 127.0.0.1:6379"
fi
