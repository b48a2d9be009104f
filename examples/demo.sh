#!/usr/bin/env bash
# The main job on this machine: make a small ext4 disk image with real files,
# back it up into a store, look at the store, restore it and compare.
# Usage: bash examples/demo.sh [WORKDIR]   (needs root only for nothing; uses mkfs.ext4 -d)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d /tmp/diskdump-demo.XXXXXX)}"
mkdir -p "$work"
command -v mkfs.ext4 >/dev/null || { echo "demo needs mkfs.ext4 (apt-get install e2fsprogs)"; exit 1; }
cargo build --release --quiet
dd=target/release/diskdump
store="$work/store"

echo "== making a 256 MiB ext4 image filled with files from /usr/share"
mkdir -p "$work/files"
cp -r /usr/share/doc "$work/files/doc" 2>/dev/null || true
cp -r /usr/share/perl5 "$work/files/perl5" 2>/dev/null || true
cp -r "$work/files/doc" "$work/files/doc-copy" 2>/dev/null || true   # duplicated tree: deduplicated
seq 1 200000 | sed 's/^/log line /' > "$work/files/app.log"
rm -f "$work/disk.img"
mkfs.ext4 -q -F -d "$work/files" "$work/disk.img" 256M

echo "== diskdump import"
$dd --store "$store" import "$work/disk.img" --as demo:/dev/vda
echo "== the next day: change a file, import again (only new blocks are stored)"
echo "changed" >> "$work/files/app.log"
cp "$work/disk.img" "$work/disk-day2.img"
mkfs.ext4 -q -F -d "$work/files" "$work/disk-day2.img" 256M
$dd --store "$store" import "$work/disk-day2.img" --as demo:/dev/vda
echo "== diskdump status"
$dd --store "$store" status
echo "== diskdump info demo-vda"
$dd --store "$store" info demo-vda
echo "== diskdump restore demo-vda -o restored.img"
$dd --store "$store" restore demo-vda -o "$work/restored.img"
cmp "$work/disk-day2.img" "$work/restored.img" && echo "restored image is byte-identical"
echo "== diskdump verify"
$dd --store "$store" verify
echo "demo done; files in $work"
