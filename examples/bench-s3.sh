#!/usr/bin/env bash
# The S3 store against the local store, side by side in one run: import and dump over SSH into each
# (day 1 into an empty store, then day 2), restore of day 2 and a cold sequential read through the mount,
# each from both stores; the S3 store on a local 3-node Garage cluster (replication 3, its data on the
# same disk as the local store), with the requests each operation made (DISKDUMP_S3_STATS).
#
#   bash examples/bench-s3.sh [--runs 3] [--images DIR] [--workdir /var/tmp/diskdump-bench] [--bin DISKDUMP]
#
# Images: day1.img and day2.img from examples/bench.sh (the newest WORKDIR/images/*/ by default; run
# `bash examples/bench.sh --only limits` once to make them). Medians over --runs; the page cache is
# dropped before every timed command ("cold"), and writes are timed including a final sync. The S3
# rows start with an empty local cache (DISKDUMP_S3_CACHE) for day 1, the same host's cache after.
# Run as root (sshd, FUSE, drop_caches). Prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=3 WORK=/var/tmp/diskdump-bench IMAGES= BIN=
while (($#)); do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --workdir) WORK=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-s3: unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ -z $IMAGES ]]; then
  IMAGES=$(ls -dt "$WORK"/images/*/ 2>/dev/null | while read -r d; do
    [[ -f $d/day1.img && -f $d/day2.img ]] && { echo "${d%/}"; break; }; done || true)
fi
[[ -n $IMAGES && -f $IMAGES/day1.img ]] || {
  echo "bench-s3: no day1.img/day2.img; run 'bash examples/bench.sh --only limits' once" >&2; exit 2; }
if [[ -z $BIN ]]; then cargo build --release --quiet; BIN=$REPO/target/release/diskdump; fi
B=$WORK/s3bench
rm -rf "$B"; mkdir -p "$B"
say() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
pids=()
cleanup() {
  mountpoint -q "$B/mnt" 2>/dev/null && umount "$B/mnt" || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  bash "$REPO/examples/garage-cluster.sh" stop "$B/garage" >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "garage: starting 3 nodes"
bash "$REPO/examples/garage-cluster.sh" start "$B/garage" >"$B/garage.env"
# shellcheck disable=SC1091
source "$B/garage.env"
S3="s3://$DISKDUMP_TEST_BUCKET"

# A throwaway sshd on 127.0.0.1 for the dumps (as in examples/demo.sh).
ssh_dir=$B/ssh
# shellcheck source=examples/throwaway-sshd.sh
. "$REPO/examples/throwaway-sshd.sh"
start_throwaway_sshd "$ssh_dir" benchhost
pids+=("$SSHD_PID")
export DISKDUMP_S3_STATS=1

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# time_cmd NAME CMD...: wall seconds (incl. a final sync) into $B/t/NAME, the S3 request line into $B/r/NAME.
mkdir -p "$B/t" "$B/r"
time_cmd() {
  local name=$1; shift
  drop
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$B/out" 2>"$B/err" || { echo "bench-s3: $name failed: $(tail -3 "$B/err")" >&2; return 1; }
  sync
  t1=$(date +%s.%N)
  awk "BEGIN{printf \"%.3f\n\", $t1 - $t0}" >>"$B/t/$name"
  grep -o 's3 requests: .*' "$B/err" | tail -1 >"$B/r/$name" || true
}
median() { sort -n "$B/t/$1" | awk '{a[NR]=$1} END{if (NR==0) {print "n/a"} else if (NR%2) {print a[(NR+1)/2]} else {printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}}'; }

# The service's own speed here: day 1's stored bytes as 32 MiB objects, PUT 2 at a time (as diskdump
# uploads), then read back in 4 MiB ranges 6 at a time (as a restore fetches windows).
LIMITS=$REPO/target/release/examples/s3_limits
[[ -x $LIMITS ]] || cargo build --release --quiet --example s3_limits
for run in $(seq "$RUNS"); do
  drop
  "$LIMITS" "$S3/limits-$run" 21 32M 2 >>"$B/limits-put" 2>&1 || true
  drop
  "$LIMITS" "$S3/limits-g$run" 21 32M 6 >>"$B/limits-get" 2>&1 || true
done

for run in $(seq "$RUNS"); do
  say "run $run/$RUNS"
  local_store=$B/local-$run s3_store=$S3/run$run
  export DISKDUMP_S3_CACHE=$B/cache-$run
  "$BIN" init "$local_store" >/dev/null
  "$BIN" init "$s3_store" >/dev/null
  time_cmd import1-local "$BIN" --store "$local_store" import "$IMAGES/day1.img" --as img --date 2026-01-01
  time_cmd import1-s3 "$BIN" --store "$s3_store" import "$IMAGES/day1.img" --as img --date 2026-01-01
  time_cmd import2-local "$BIN" --store "$local_store" import "$IMAGES/day2.img" --as img --date 2026-01-02
  time_cmd import2-s3 "$BIN" --store "$s3_store" import "$IMAGES/day2.img" --as img --date 2026-01-02
  # Dumps into fresh stores (day 1 then day 2), the same images over SSH.
  "$BIN" init "$local_store-d" >/dev/null
  "$BIN" init "$s3_store-d" >/dev/null
  time_cmd dump1-local "$BIN" --store "$local_store-d" dump "benchhost:$IMAGES/day1.img" --as img
  time_cmd dump1-s3 "$BIN" --store "$s3_store-d" dump "benchhost:$IMAGES/day1.img" --as img
  time_cmd dump2-local "$BIN" --store "$local_store-d" dump "benchhost:$IMAGES/day2.img" --as img
  time_cmd dump2-s3 "$BIN" --store "$s3_store-d" dump "benchhost:$IMAGES/day2.img" --as img
  # Reads of day 2: the S3 store's disk cache emptied first (a cold host), then kept (a re-read).
  time_cmd restore-local "$BIN" --store "$local_store" restore img -o "$B/out.img" --force
  rm -rf "$DISKDUMP_S3_CACHE/s3"/*/blocks
  time_cmd restore-s3 "$BIN" --store "$s3_store" restore img -o "$B/out.img" --force
  time_cmd restore-s3-cached "$BIN" --store "$s3_store" restore img -o "$B/out.img" --force
  cmp -s "$B/out.img" "$IMAGES/day2.img" || { echo "bench-s3: restore from S3 differs" >&2; exit 1; }
  rm -f "$B/out.img"
  mkdir -p "$B/mnt"
  for which in local s3; do
    store=$local_store; [[ $which == s3 ]] && { store=$s3_store; rm -rf "$DISKDUMP_S3_CACHE/s3"/*/blocks; }
    "$BIN" mount "$store" "$B/mnt" >"$B/mount.log" 2>&1 &
    mpid=$!
    for _ in $(seq 100); do mountpoint -q "$B/mnt" && break; sleep 0.1; done
    time_cmd "mount-dd-$which" dd if="$B/mnt/2026/01/02/img.img" of=/dev/null bs=1M
    kill "$mpid"; wait "$mpid" 2>/dev/null || true
    grep -o 's3 requests: .*' "$B/mount.log" | tail -1 >"$B/r/mount-dd-$which" || true
  done
  rm -rf "$local_store" "$local_store-d"
done

size=$(stat -c %s "$IMAGES/day2.img")
req() { sed 's/^s3 requests: //; s/ bytes)/)/g' "$B/r/$1" 2>/dev/null || true; }
row() {   # LABEL KEY
  local l s ratio
  l=$(median "$1-local") s=$(median "$1-s3")
  ratio=$(awk "BEGIN{ if ($s > 0) printf \"%.2f\", $l / $s; else print \"n/a\" }")
  printf '| %s | %s s | %s s | %sx | %s |\n' "$2" "$l" "$s" "$ratio" "$(req "$1-s3")"
}
echo
echo "S3 store (3-node Garage on 127.0.0.1, replication 3) vs local store; $(nproc) cores; images $IMAGES;"
echo "medians of $RUNS runs, cold page cache; ratio = local time / S3 time (1.00 = as fast as local)."
echo
echo "Garage alone (examples/s3_limits.rs, 672 MiB in 32 MiB objects): $(grep -o 'PUT.*' "$B/limits-put" | sort -t"(" -k2 -n | sed -n "$(( (RUNS + 1) / 2 ))p")"
echo "  (6 threads: $(grep -o 'GET in.*' "$B/limits-get" | sort -t"(" -k2 -n | sed -n "$(( (RUNS + 1) / 2 ))p"))"
echo
echo "| operation | local store | S3 store | S3 speed vs local | S3 requests (last run) |"
echo "|---|--:|--:|--:|---|"
row import1 "import day 1 ($(numfmt --to=iec "$size"))"
row import2 "import day 2"
row dump1 "dump over SSH, day 1"
row dump2 "dump over SSH, day 2"
row restore "restore day 2 (S3: empty disk cache)"
printf '| restore day 2 again (S3: disk cache kept) | %s s | %s s | %sx | %s |\n' "$(median restore-local)" \
  "$(median restore-s3-cached)" "$(awk "BEGIN{printf \"%.2f\", $(median restore-local) / $(median restore-s3-cached)}")" \
  "$(req restore-s3-cached)"
row mount-dd "cold dd bs=1M through the mount"
