#!/bin/sh
# Small and random reads through `diskdump mount` against the raw image file, in one run (root, FUSE, fio).
# Usage: examples/bench-reads.sh IMAGE [WORKDIR] [FIO_SECONDS]   (build with --release first)
# Rows: fio 4 KiB random reads (--direct=1, psync, 1 job) over the whole image; 200,000 reads of 32 bytes at
# random offsets in the first 64 MiB, warm (a first pass fills the caches); a cold sequential dd bs=1M; the
# mount daemon's peak RSS (VmHWM) after each pattern, and under fio with 16 jobs. MODES lists the mount's
# read modes to compare: "cache" (the default, page cache) and "direct" (--direct-io).
set -eu
IMG=$(realpath "$1")
W=${2:-/var/tmp/diskdump-reads}
SECS=${3:-10}
BIN=${BIN:-$(dirname "$0")/../target/release/diskdump}
MODES=${MODES:-cache direct}
mkdir -p "$W"
STORE=$W/store MNT=$W/mnt
mkdir -p "$MNT"
SIZE=$(stat -c %s "$IMG")
[ -d "$STORE" ] || "$BIN" --store "$STORE" import "$IMG" --as bench --date 2026-01-01 >/dev/null

fio_run() { # file, extra fio args...; prints "iops seconds"
    f=$1; shift
    fio --name=r --readonly --filename="$f" --ioengine=psync --output-format=json "$@" |
        python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"]; print(sum(x["read"]["iops"] for x in j), max(x["read"]["runtime"] for x in j)/1000)'
}
rand4k() { fio_run "$1" --rw=randread --bs=4k --direct=1 --size="$SIZE" --runtime="$SECS" --time_based; }
small() { fio_run "$1" --rw=randread --bs=32 --size=64M --number_ios=200000 --norandommap --randrepeat=1; }
rand16() {
    fio_run "$1" --rw=randread --bs=4k --direct=1 --size="$SIZE" --runtime="$SECS" --time_based \
        --numjobs=16 --group_reporting=0
}
hwm() { awk '/VmHWM/ { printf "%d MiB", $2 / 1024 }' "/proc/$PID/status"; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== raw image file $IMG"
echo "fio 4k randread direct=1:    $(rand4k "$IMG") (iops s)"
small "$IMG" >/dev/null
echo "32-byte reads x200k, warm:   $(small "$IMG") (iops s)"

for mode in $MODES; do
    echo "== mount, mode $mode"
    rm -f "$W/mount.log"
    "$BIN" mount $([ "$mode" = direct ] && echo --direct-io) "$STORE" "$MNT" >"$W/mount.log" 2>&1 &
    PID=$!
    until grep -q "^mounted" "$W/mount.log" 2>/dev/null; do sleep 0.05; done
    F=$(find "$MNT" -name '*.img' | head -1)
    t0=$(date +%s.%N); dd if="$F" of=/dev/null bs=1M 2>/dev/null; t1=$(date +%s.%N)
    echo "dd bs=1M cold:               $(echo "$SIZE / ($t1 - $t0) / 1000000" | bc) MB/s, rss $(hwm)"
    echo "fio 4k randread direct=1:    $(rand4k "$F") (iops s), rss $(hwm)"
    small "$F" >/dev/null
    echo "32-byte reads x200k, warm:   $(small "$F") (iops s), rss $(hwm)"
    echo "fio 4k randread 16 jobs:     $(rand16 "$F") (iops s), rss $(hwm)"
    kill -TERM "$PID"; wait "$PID" || true
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
