#!/usr/bin/env bash
# The main job on this machine, end to end:
#   1. make a 256 MiB ext4 disk image filled with real files,
#   2. dump it over SSH into a store (a throwaway sshd on 127.0.0.1 plays the
#      remote server; diskdump deploys its agent there by itself),
#   3. change a file and dump again the next day (only new blocks move),
#   4. look at the store, restore the image and compare it byte for byte,
#   5. mount the store, loop-mount the dumped image and read a file from it.
# Usage: bash examples/demo.sh [WORKDIR]     (as root: sshd, FUSE and loop mounts)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d /tmp/diskdump-demo.XXXXXX)}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
# What a fresh machine lacks (as root, like .ci/run): mkfs.ext4, sshd, FUSE.
missing=()
for p in e2fsprogs openssh-server fuse3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || { echo "the demo needs: ${missing[*]} (apt-get install them, or run as root)"; exit 1; }
  echo "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --quiet
dd="$PWD/target/release/diskdump"
store="$work/store"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  mountpoint -q "$work/inside" 2>/dev/null && umount "$work/inside" || true
}
trap cleanup EXIT

echo "== 1. a 256 MiB ext4 image filled with files from /usr/share"
rm -rf "$work/files"; mkdir -p "$work/files"
cp -r /usr/share/doc "$work/files/doc" 2>/dev/null || true
cp -r /usr/share/perl5 "$work/files/perl5" 2>/dev/null || true
seq 1 200000 | sed 's/^/log line /' > "$work/files/app.log"
mkfs.ext4 -q -F -d "$work/files" "$work/disk.img" 256M

echo "== 2. a throwaway sshd on 127.0.0.1 and an ssh config for host 'demohost'"
ssh_dir="$work/ssh"
# shellcheck source=examples/throwaway-sshd.sh
. examples/throwaway-sshd.sh
start_throwaway_sshd "$ssh_dir" demohost
pids+=("$SSHD_PID")
export HOME="$ssh_dir/home"

echo "== diskdump init $store; diskdump dump demohost:$work/disk.img --as demo-vda"
"$dd" init "$store"
"$dd" --store "$store" dump "demohost:$work/disk.img" --as demo-vda
echo "== 3. the next day: change a file, dump again (only changed blocks cross the wire)"
echo "changed on day 2" >> "$work/files/app.log"
mkfs.ext4 -q -F -d "$work/files" "$work/disk.img" 256M
"$dd" --store "$store" dump "demohost:$work/disk.img" --as demo-vda

echo "== 4. diskdump status / info / restore / verify"
"$dd" --store "$store" status
"$dd" --store "$store" info demo-vda
"$dd" --store "$store" restore demo-vda -o "$work/restored.img"
cmp "$work/disk.img" "$work/restored.img" && echo "restored image is byte-identical to the source"
"$dd" --store "$store" verify

echo "== 5. diskdump mount: every dump is a raw image file"
if [ -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$work/mnt" "$work/inside"
  "$dd" mount "$store" "$work/mnt" &
  pids+=($!)
  for _ in $(seq 100); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
  img=$(find "$work/mnt" -name 'demo-vda+2.img' | head -1)
  ls -l "$img"
  mount -o loop,ro "$img" "$work/inside"
  echo "inside the dumped filesystem:"; ls "$work/inside" | head
  tail -1 "$work/inside/app.log"
  umount "$work/inside"
  cmp "$img" "$work/restored.img" && echo "the mounted image equals the restored one"
else
  echo "(skipped: mounting needs root and /dev/fuse)"
fi
echo "== 6. diskdump list, then forget: keep the newest dump of each of the last 7 days (restic's rules)"
"$dd" --store "$store" list
"$dd" --store "$store" forget --keep-daily 7 --dry-run
"$dd" --store "$store" forget --keep-daily 7 --prune
"$dd" --store "$store" list
echo "demo done; files in $work"
