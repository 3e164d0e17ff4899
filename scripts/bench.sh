#!/usr/bin/env bash
# Runs a benchmark on a machine that has nothing but Rust: installs redis-server (with
# redis-benchmark) with apt-get when missing; the benches start their own throwaway server.
#
# Usage: bash scripts/bench.sh [side_by_side|herd|micro|local] [args for the bench]
set -euo pipefail
SCRIPT=bench.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ensure_redis_server
bench=${1:-side_by_side}
shift || true
log "running: cargo bench --bench $bench $*"
exec cargo bench --bench "$bench" -- "$@"
