#!/usr/bin/env bash
# The service's tests (service/tests/) over real HTTP, against a throwaway PostgreSQL and then
# against SQLite, each test with its own redis-server.
#
# Usage: bash scripts/service_test.sh [CARGO-TEST-ARGS...]   (e.g. -- redis_down)
#
# Starts, never touching the machine's own PostgreSQL or Redis:
#   * a throwaway PostgreSQL cluster (initdb + pg_ctl, as a non-root user, on a free loopback
#     port, with pg_stat_statements so the tests count queries on the database's side):
#     SERVICE_TEST_PG_URL
#   * redis-server is started by each test (CACHEOBJ_REDIS_SERVER names the binary)
# and installs postgresql / redis-server with apt-get when missing.
set -euo pipefail

SCRIPT=service_test.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/pg.sh
. "$(dirname "${BASH_SOURCE[0]}")/pg.sh"

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ensure_redis_server
CACHEOBJ_REDIS_SERVER=$(command -v redis-server)
export CACHEOBJ_REDIS_SERVER

trap 'pg_stop' EXIT
trap 'log interrupted; exit 130' INT
trap 'log terminated; exit 143' TERM
pg_start

# Two at a time: each test runs a redis-server and up to four service processes.
args=(-- --test-threads 2)
[ "$#" -gt 0 ] && args=("$@")
# On SQLite, two tests do not apply: the database cannot go down apart from the service, and
# the SIGTERM test holds a request in flight with a PostgreSQL table lock.
sqlite_skips=(--skip database_down --skip sigterm)

log "building the service and its tests"
cargo build -p cacheobj-service --tests --bins

log "running the service suite on PostgreSQL ($SERVICE_TEST_PG_URL)"
SERVICE_TEST_DB=postgres cargo test -p cacheobj-service "${args[@]}"

log "running the service suite on SQLite, skipping database_down and sigterm (PostgreSQL only)"
[ "$#" -gt 0 ] || args+=("${sqlite_skips[@]}")
SERVICE_TEST_DB=sqlite cargo test -p cacheobj-service "${args[@]}"

log "service tests passed on PostgreSQL and SQLite"
