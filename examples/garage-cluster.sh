#!/usr/bin/env bash
# A throwaway 3-node Garage cluster on 127.0.0.1 (replication factor 3), for
# the S3 tests, the benchmark, and trying an S3 store by hand.
#
#   examples/garage-cluster.sh start DIR    start it; writes DIR/env (sh syntax)
#   examples/garage-cluster.sh kill DIR N   kill -9 node N (1..3)
#   examples/garage-cluster.sh stop DIR     stop every node and remove DIR
#
# DIR/env exports AWS_ENDPOINT_URL (node 1's S3 API), AWS_REGION,
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and DISKDUMP_TEST_BUCKET (a bucket
# the key may read and write), so `. DIR/env` is all a client needs.
# The garage binary is $GARAGE, else `garage` on PATH, else the copy
# .ci/run builds under ~/.cache/diskdump-ci.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[[ -n $cmd && -n $dir ]] || { sed -n '2,13p' "$0"; exit 2; }

garage_bin() {
  if [[ -n ${GARAGE:-} ]]; then echo "$GARAGE"; return; fi
  if command -v garage >/dev/null; then command -v garage; return; fi
  local cached=$HOME/.cache/diskdump-ci/garage-2.5.0/bin/garage
  [[ -x $cached ]] && { echo "$cached"; return; }
  echo "garage-cluster: no garage binary (set GARAGE, or run .ci/run to build one)" >&2
  exit 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Nine consecutive free ports (rpc, s3, admin for each node) from a random base.
pick_base() {
  local base p ok
  for _ in $(seq 50); do
    base=$((20000 + RANDOM % 30000))
    ok=1
    for p in $(seq "$base" $((base + 8))); do port_free "$p" || { ok=0; break; }; done
    ((ok)) && { echo "$base"; return; }
  done
  echo "garage-cluster: no free ports" >&2
  exit 1
}

# The S3 API answers HTTP (any status: an unauthenticated request is refused).
s3_answers() {
  local reply
  reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && head -c 12 <&3) 2>/dev/null) || return 1
  [[ $reply == HTTP/* ]]
}

# Several tries with fresh ports: two clusters started at the same moment may
# pick overlapping ports, and a node may die starting on a loaded machine.
start() {
  local attempt
  for attempt in 1 2 3; do
    # A process of its own, so that `set -e` holds inside (it does not in an `if`).
    if bash "$0" _start_once "$dir"; then cat "$dir/env"; return 0; fi
    echo "garage-cluster: start attempt $attempt failed; retrying with other ports" >&2
    stop_nodes
    rm -rf "$dir"
  done
  echo "garage-cluster: could not start a cluster in 3 attempts" >&2
  exit 1
}

start_once() {
  local g base secret i
  g=$(garage_bin)
  mkdir -p "$dir"
  chmod 700 "$dir"
  base=$(pick_base)
  secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  for i in 1 2 3; do
    local n=$dir/n$i rpc=$((base + 3 * (i - 1)))
    mkdir -p "$n/meta" "$n/data"
    cat >"$n/garage.toml" <<EOF
metadata_dir = "$n/meta"
data_dir = "$n/data"
db_engine = "lmdb"
replication_factor = 3
# diskdump's packs are LZ4 frames already: zstd on top (Garage's default)
# would cost CPU on every replica for nothing.
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"
bootstrap_peers = []

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$((rpc + 1))"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((rpc + 2))"
EOF
    RUST_LOG=warn setsid "$g" -c "$n/garage.toml" server >"$n/log" 2>&1 &
    echo $! >"$n/pid"
  done
  # Each node answers `node id` once its RPC is up.
  local ids=()
  for i in 1 2 3; do
    local id=""
    for _ in $(seq 200); do
      id=$("$g" -c "$dir/n$i/garage.toml" node id -q 2>/dev/null) && break
      sleep 0.05
    done
    [[ -n $id ]] || { echo "garage-cluster: node $i did not start:" >&2; tail -5 "$dir/n$i/log" >&2; exit 1; }
    ids+=("$id")
  done
  local c1=$dir/n1/garage.toml
  "$g" -c "$c1" node connect "${ids[1]}" >/dev/null
  "$g" -c "$c1" node connect "${ids[2]}" >/dev/null
  for id in "${ids[@]}"; do
    "$g" -c "$c1" layout assign -z dc1 -c 1G "${id%@*}" >/dev/null
  done
  "$g" -c "$c1" layout apply --version 1 >/dev/null
  local key_out key_id secret_key bucket=diskdump-test
  key_out=$("$g" -c "$c1" key create diskdump-test)
  key_id=$(awk -F': *' '/Key ID/ {print $2; exit}' <<<"$key_out")
  secret_key=$(awk -F': *' '/Secret key/ {print $2; exit}' <<<"$key_out")
  [[ -n $key_id && -n $secret_key ]] || { echo "garage-cluster: cannot read the key: $key_out" >&2; exit 1; }
  "$g" -c "$c1" bucket create "$bucket" >/dev/null
  "$g" -c "$c1" bucket allow --read --write --owner "$bucket" --key diskdump-test >/dev/null
  cat >"$dir/env" <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$((base + 1))
export AWS_REGION=garage
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$secret_key
export DISKDUMP_TEST_BUCKET=$bucket
export GARAGE_NODE_ENDPOINTS="http://127.0.0.1:$((base + 1)) http://127.0.0.1:$((base + 4)) http://127.0.0.1:$((base + 7))"
EOF
  chmod 600 "$dir/env"
  # Ready when every node's S3 API answers.
  for i in 1 4 7; do
    local up=0
    for _ in $(seq 200); do s3_answers $((base + i)) && { up=1; break; }; sleep 0.05; done
    ((up)) || { echo "garage-cluster: the S3 API on port $((base + i)) does not answer" >&2; return 1; }
  done
}

stop_nodes() {
  local i
  for i in 1 2 3; do
    [[ -f $dir/n$i/pid ]] && kill -TERM "$(cat "$dir/n$i/pid")" 2>/dev/null || true
  done
  for i in 1 2 3; do
    local pid
    pid=$(cat "$dir/n$i/pid" 2>/dev/null) || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

stop() {
  stop_nodes
  rm -rf "$dir"
}

case $cmd in
  start) start ;;
  _start_once) start_once ;;
  stop) stop ;;
  kill) kill -KILL "$(cat "$dir/n${3:?node number}/pid")" ;;
  *) echo "garage-cluster: unknown command $cmd" >&2; exit 2 ;;
esac
