#!/bin/sh
# Benchmarks `diskdump mount` on an image (root, FUSE, loop devices, fio).
# Usage: examples/bench-mount.sh IMAGE [WORKDIR]    (build with --release first)
# "Cold" is a fresh mount: empty block cache and no kernel pages for the
# image; the store's files stay in the host page cache (we do not drop the
# machine's caches).
set -eu
IMG=$(realpath "$1")
W=${2:-/tmp/diskdump-bench}
BIN=${BIN:-$(dirname "$0")/../target/release/diskdump}
mkdir -p "$W"
STORE=$W/store MNT=$W/mnt INNER=$W/inner
rm -rf "$STORE"; mkdir -p "$MNT" "$INNER"
SIZE=$(stat -c %s "$IMG")

rate() { # label, seconds
    awk -v l="$1" -v s="$2" -v b="$SIZE" 'BEGIN { printf "%-34s %7.2f s  %7.0f MB/s\n", l, s, b / s / 1e6 }'
}
timed() { # label, command...
    l=$1; shift
    t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
    rate "$l" "$(echo "$t1 - $t0" | bc)"
}
mount_it() {
    rm -f "$W/mount.log"
    "$BIN" mount "$STORE" "$MNT" >"$W/mount.log" 2>&1 &
    PID=$!
    until grep -q "^mounted" "$W/mount.log" 2>/dev/null; do sleep 0.05; done
    F=$(find "$MNT" -name '*.img' | head -1)
}
unmount_it() { kill -TERM "$PID"; wait "$PID" || true; }
fio_iops() { # label
    fio --name=r --rw=randread --bs=4k --size="$SIZE" --filename="$1" --direct=0 \
        --runtime=10 --time_based --ioengine=psync --output-format=terse --terse-version=3 |
        awk -F';' -v l="$2" '{ printf "%-34s %7d IOPS\n", l, $8 }'
}

[ -e "$STORE/.blockstore" ] || "$BIN" init "$STORE" >/dev/null
"$BIN" --store "$STORE" import "$IMG" --as bench --date 2026-01-01

echo "== baseline: the raw image file"
cat "$IMG" >/dev/null
timed "cat image (page cache)" cat "$IMG"
timed "dd bs=1M image (page cache)" dd if="$IMG" of=/dev/null bs=1M
fio_iops "$IMG" "fio 4k randread image (page cache)"

echo "== through the mount"
mount_it
timed "dd bs=1M cold (fresh mount)" dd if="$F" of=/dev/null bs=1M
timed "dd bs=1M warm" dd if="$F" of=/dev/null bs=1M
fio_iops "$F" "fio 4k randread warm"
unmount_it
mount_it
fio_iops "$F" "fio 4k randread cold (fresh mount)"
unmount_it

echo "== tar of the filesystem inside (loop mount)"
mount -o loop,ro "$IMG" "$INNER"
t0=$(date +%s.%N); B=$(cd "$INNER" && tar cf - . | wc -c); t1=$(date +%s.%N)
echo "tar | wc -c, raw image loop:       $(echo "$t1 - $t0" | bc) s for $B bytes"
umount "$INNER"
mount_it
mount -o loop,ro "$F" "$INNER"
t0=$(date +%s.%N); B=$(cd "$INNER" && tar cf - . | wc -c); t1=$(date +%s.%N)
echo "tar | wc -c, loop over fresh mount: $(echo "$t1 - $t0" | bc) s for $B bytes"
umount "$INNER"
unmount_it
