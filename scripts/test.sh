#!/usr/bin/env bash
# Run the whole cacheobj test suite against a throwaway redis-server.
#
# Usage: bash scripts/test.sh [extra args for `cargo test --workspace --all-targets`]
#
# Starts its own redis-server on a free loopback port (never touches any other
# Redis on the machine), exports CACHEOBJ_TEST_REDIS_URL / CACHEOBJ_REDIS_SERVER,
# runs the tests, and stops the server (removing its temp dir) on exit.
set -euo pipefail

log() { printf 'test.sh: %s\n' "$*" >&2; }
die() { printf 'test.sh: ERROR: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --- 1. redis-server / redis-cli --------------------------------------------
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    log "using $(command -v redis-server) ($(redis-server --version | head -n1))"
else
    log "redis-server/redis-cli not found; installing the redis-server package with apt-get"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo -n)
        else
            die "redis-server is not installed, we are not root and sudo is unavailable: install redis-server (which provides redis-cli) manually"
        fi
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "redis-server is not installed and apt-get is unavailable: install redis-server (and redis-cli) manually"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update \
        || die "'apt-get update' failed; cannot install redis-server"
    "${SUDO[@]}" apt-get install -y --no-install-recommends redis-server \
        || die "'apt-get install -y redis-server' failed; install redis-server manually"
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        die "redis-server/redis-cli still not on PATH after installing the redis-server package"
    fi
    log "installed $(command -v redis-server) ($(redis-server --version | head -n1))"
fi

# --- 2. throwaway redis-server ----------------------------------------------
REDIS_PID=""
REDIS_DIR=""

cleanup() {
    if [ -n "$REDIS_PID" ]; then
        if kill -0 "$REDIS_PID" 2>/dev/null; then
            log "stopping throwaway redis-server (pid $REDIS_PID)"
            kill -TERM "$REDIS_PID" 2>/dev/null || true
            for _ in $(seq 1 50); do
                kill -0 "$REDIS_PID" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$REDIS_PID" 2>/dev/null || true
        fi
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=""
    fi
    if [ -n "$REDIS_DIR" ]; then
        rm -rf -- "$REDIS_DIR"
        REDIS_DIR=""
    fi
}
on_exit() {
    local rc=$?
    trap - EXIT
    cleanup
    exit "$rc"
}
on_signal() {
    local rc=$1
    trap - EXIT INT TERM
    log "interrupted"
    cleanup
    exit "$rc"
}
trap on_exit EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

port_in_use() {
    # Something answers on 127.0.0.1:$1 (redis or not)?
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_free_port() {
    local port
    if command -v python3 >/dev/null 2>&1 \
        && port=$(python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null) \
        && [ -n "$port" ]; then
        echo "$port"
        return 0
    fi
    # Fallback: random ports in 20000..59999 until one is not answering.
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        if ! port_in_use "$port"; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

REDIS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cacheobj-test-redis.XXXXXX")
PORT=""
for attempt in 1 2 3 4 5; do
    PORT=$(pick_free_port) || die "could not find a free loopback TCP port"
    log "starting throwaway redis-server on 127.0.0.1:$PORT (attempt $attempt, dir $REDIS_DIR)"
    redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --dir "$REDIS_DIR" --logfile "$REDIS_DIR/redis.log" \
        >"$REDIS_DIR/stdout.log" 2>&1 &
    REDIS_PID=$!

    ready=""
    deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! kill -0 "$REDIS_PID" 2>/dev/null; then
            break # exited (e.g. the port was grabbed meanwhile); retry below
        fi
        if [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null || true)" = "PONG" ]; then
            # Make sure the PONG came from *our* server, not some other one.
            if redis-cli -h 127.0.0.1 -p "$PORT" info server 2>/dev/null \
                | tr -d '\r' | grep -qx "process_id:$REDIS_PID"; then
                ready=1
                break
            fi
        fi
        sleep 0.1
    done
    [ -n "$ready" ] && break

    if kill -0 "$REDIS_PID" 2>/dev/null; then
        # Alive but not answering within 10 s: that is not a port race.
        log "redis-server log:"
        cat "$REDIS_DIR/redis.log" "$REDIS_DIR/stdout.log" >&2 2>/dev/null || true
        die "throwaway redis-server on 127.0.0.1:$PORT did not answer PING with PONG within 10 s"
    fi
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=""
    log "redis-server exited before becoming ready; its log:"
    cat "$REDIS_DIR/redis.log" "$REDIS_DIR/stdout.log" >&2 2>/dev/null || true
done
[ -n "$REDIS_PID" ] || die "could not start a throwaway redis-server (5 attempts failed; see log above)"
log "redis-server ready on 127.0.0.1:$PORT (pid $REDIS_PID)"

export CACHEOBJ_TEST_REDIS_URL="redis://127.0.0.1:$PORT/"
CACHEOBJ_REDIS_SERVER=$(command -v redis-server)
export CACHEOBJ_REDIS_SERVER
log "CACHEOBJ_TEST_REDIS_URL=$CACHEOBJ_TEST_REDIS_URL CACHEOBJ_REDIS_SERVER=$CACHEOBJ_REDIS_SERVER"

# --- 3. tests ---------------------------------------------------------------
log "running: cargo test --workspace --all-targets $*"
cargo test --workspace --all-targets "$@"

log "running: cargo test --workspace --doc"
cargo test --workspace --doc

log "all tests passed"
