#!/usr/bin/env bash
# Client instructions per cache hit, cacheobj `fetch` against hand-written redis-rs
# (GET + rmp-serde decode), a local-tier hit against moka (a formatted key per get), and a
# read that misses a local tier (full, so not kept; or kept) against the same read without one
# (and that read followed by a moka insert by hand, the least keeping it can cost),
# counted with callgrind: repeatable whatever else the machine is doing, unlike timings. Each
# mode runs twice (10,000 and 30,000 hits under valgrind); the difference between the runs
# cancels start-up and pre-filling, leaving 20,000 hits.
#
# Usage: bash scripts/instructions_per_hit.sh        (needs valgrind and redis-server)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCRIPT=instructions_per_hit.sh
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

command -v valgrind >/dev/null || die "valgrind is not installed"
ensure_redis_server

cargo build --release --example hit_loop
bin=target/release/examples/hit_loop

port=$(pick_free_port) || die "could not find a free loopback TCP port"
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" >/dev/null
trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

count() { # mode hits -> "instructions hits"
    local out
    out=$(HIT_LOOP_URL="redis://127.0.0.1:$port" HIT_LOOP_HITS=$2 \
        valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" 2>&1)
    local ir hits
    ir=$(printf '%s\n' "$out" | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    hits=$(printf '%s\n' "$out" | sed -n 's/.* hits \([0-9]*\) in .*/\1/p')
    echo "$ir $hits"
}

# The first run of the loop loads and fills the items; every counted run must find them there.
HIT_LOOP_URL="redis://127.0.0.1:$port" HIT_LOOP_HITS=1 "$bin" cacheobj >/dev/null

declare -A per_hit
for mode in cacheobj raw local moka plain-miss local-miss kept-miss insert-miss; do
    read -r ir1 hits1 < <(count "$mode" 10000)
    read -r ir2 hits2 < <(count "$mode" 30000)
    per_hit[$mode]=$(( (ir2 - ir1) / (hits2 - hits1) ))
    echo "$mode: $ir1 instructions / $hits1 hits, $ir2 / $hits2 -> ${per_hit[$mode]} per hit"
done
awk -v a="${per_hit[cacheobj]}" -v b="${per_hit[raw]}" \
    'BEGIN { printf "ratio instructions_per_hit_vs_raw %.3f  # cacheobj / redis-rs by hand, lower is better\n", a / b }'
awk -v a="${per_hit[local]}" -v b="${per_hit[moka]}" \
    'BEGIN { printf "ratio local_hit_vs_moka %.3f  # a local-tier hit / moka get with a formatted key, lower is better\n", a / b }'
awk -v a="${per_hit[local-miss]}" -v b="${per_hit[plain-miss]}" \
    'BEGIN { printf "ratio full_tier_miss_vs_no_local %.3f  # a miss of a full local tier (not kept) / the read without .local\n", a / b }'
awk -v a="${per_hit[kept-miss]}" -v b="${per_hit[plain-miss]}" \
    'BEGIN { printf "ratio kept_miss_vs_no_local %.3f  # a miss that is kept (a GET, a PTTL on the key'"'"'s first read only, an insert) / the read without .local\n", a / b }'
awk -v a="${per_hit[insert-miss]}" -v b="${per_hit[plain-miss]}" \
    'BEGIN { printf "ratio insert_by_hand_vs_no_local %.3f  # the read without .local, then a moka insert by hand / the read: keeping'"'"'s floor\n", a / b }'
awk -v a="${per_hit[kept-miss]}" -v b="${per_hit[insert-miss]}" \
    'BEGIN { printf "ratio kept_miss_vs_insert_by_hand %.3f  # a miss that is kept / the read and a moka insert by hand\n", a / b }'
