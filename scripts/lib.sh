# shellcheck shell=bash
# Shared by the scripts here: logging, installing redis-server on a machine that has nothing,
# and picking a free loopback port. Set SCRIPT to the caller's name before sourcing.

log() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; }
die() { printf '%s: ERROR: %s\n' "$SCRIPT" "$*" >&2; exit 1; }

# apt_get_cmd WHAT: sets APT to `apt-get` (as root) or `sudo -n apt-get`; dies naming WHAT
# when neither is possible.
apt_get_cmd() {
    local what=$1
    APT=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            APT=(sudo -n)
        else
            die "$what is not installed, we are not root and sudo is unavailable: install $what manually"
        fi
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "$what is not installed and apt-get is unavailable: install $what manually"
    APT+=(apt-get)
}

# ensure_redis_server: redis-server and redis-cli (and redis-benchmark, same package) on PATH,
# installed with apt-get when missing.
ensure_redis_server() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        log "using $(command -v redis-server) ($(redis-server --version | head -n1))"
        return 0
    fi
    log "redis-server/redis-cli not found; installing the redis-server package with apt-get"
    apt_get_cmd "redis-server (which provides redis-cli)"
    export DEBIAN_FRONTEND=noninteractive
    "${APT[@]}" update \
        || die "'apt-get update' failed; cannot install redis-server"
    "${APT[@]}" install -y --no-install-recommends redis-server \
        || die "'apt-get install -y redis-server' failed; install redis-server manually"
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        die "redis-server/redis-cli still not on PATH after installing the redis-server package"
    fi
    log "installed $(command -v redis-server) ($(redis-server --version | head -n1))"
}

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

# --- throwaway servers (scripts/test.sh, scripts/compat.sh) ---

# stop_servers PID:DESC...: SIGTERM to each still-running server, up to 5 s for all of
# them to exit, then SIGKILL to the rest, and reap them.
stop_servers() {
    local entry pid alive
    for entry in "$@"; do
        pid=${entry%%:*}
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping ${entry#*:} (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for _ in $(seq 1 50); do
        alive=""
        for entry in "$@"; do
            kill -0 "${entry%%:*}" 2>/dev/null && alive=1
        done
        [ -n "$alive" ] || break
        sleep 0.1
    done
    for entry in "$@"; do
        pid=${entry%%:*}
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# wait_ready PID REDIS-CLI-ARGS...: waits up to 10 s until the server answers PING with PONG
# and INFO says it is process PID (not some other server), asking with $REDIS_CLI (default
# redis-cli). Returns 0 when ready, 2 when the process exited, 1 when it is alive but did not
# answer in time.
wait_ready() {
    local pid=$1
    shift
    local deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        kill -0 "$pid" 2>/dev/null || return 2
        if [ "$("${REDIS_CLI:-redis-cli}" "$@" ping 2>/dev/null || true)" = "PONG" ] \
            && "${REDIS_CLI:-redis-cli}" "$@" info server 2>/dev/null \
            | tr -d '\r' | grep -qx "process_id:$pid"; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# pick_free_ports N: N distinct free loopback ports, one a line.
pick_free_ports() {
    local n=$1 port picked=" " count=0 tries=0
    while [ "$count" -lt "$n" ]; do
        tries=$((tries + 1))
        [ "$tries" -le 200 ] || return 1
        port=$(pick_free_port) || return 1
        case "$picked" in *" $port "*) continue ;; esac
        picked="$picked$port "
        count=$((count + 1))
        echo "$port"
    done
}

# show_logs FILE...: each existing file on stderr under a header.
show_logs() {
    local f
    for f in "$@"; do
        [ -f "$f" ] || continue
        printf -- '--- %s ---\n' "$f" >&2
        cat "$f" >&2 || true
    done
}
