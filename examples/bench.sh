#!/usr/bin/env bash
# The benchmark: diskdump against the Python diskdump 0.1.5, borg 1.2 and restic 0.14, and against the
# machine's own limits, in one run on one machine. Prints a table of medians; a failing tool or command
# gives a row "n/a: <error>" and the benchmark goes on.
#
#   bash examples/bench.sh [--size 2G] [--runs 3] [--quick] [--markdown FILE] [--json FILE]
#                          [--only limits,import,dump,restore,mount,verify,gc,s3] [--tools ours,python,borg,restic]
#                          [--warm] [--fio-seconds 10] [--workdir /var/tmp/diskdump-bench] [--bin DISKDUMP]
#   bash examples/bench.sh --scale [--scale-sizes 1G,2G,4G,8G] [--scale-manifests 1,10,100] [--runs 3]
#                          [--scale-history 32] [--scale-only sizes,manifests,history] [--size 2G]
#
# --quick is --size 256M --runs 1 --fio-seconds 3 (a smoke test of the harness, not a measurement).
# --warm skips dropping the page cache; --bin times a given diskdump binary instead of building this tree.
# DUMP_VARIANTS="lz4/openssh" (environment) limits the dump part to those of ours' variants (default: lz4/openssh
# lz4/libssh2 zlib/openssh); Python 0.1.5 runs with lz4/openssh's slot.
# --scale times only ours: per size, import, restore, mount start-up and a cold dd through the mount, and dump
# over SSH of a sparse image with 25% data (holes between); per manifest count, status, gc --dry-run, verify
# and mount start-up. It needs about a quarter of the sizes' sum free in the work dir, plus half the largest.
# Its history part is a realistic store: --scale-history days (32) of one --size disk (the ext4 day-1 image
# below), 2% of its bytes rewritten each day (runs of 4-256 KiB at random offsets, half incompressible, half
# log text); it times each day's import (cold), then mount start-up, listing the mount, fio 4 KiB random reads
# over every image at once (the daemon's peak memory with all of them open), list, verify, and gc after
# forget --keep-last half — time and peak memory each, so growth with the number of dumps shows.
# Run as root on Debian 12: it installs what is missing (borgbackup restic fio lz4 e2fsprogs openssh-server
# fuse3 time nftables), the Python diskdump 0.1.5 into a venv under the work dir, and runs
# `cargo build --release`. Everything else stays in the work dir; rm -rf it to clean up.
#
# Images (under WORKDIR/images/<size>-<recipe hash>/, reused while the recipe below and bench.py are unchanged;
# the ext4 images copy this machine's system files, so they are reproducible per machine, not across machines):
#   day1.img   SIZE ext4 (mkfs.ext4 -d, fixed UUID, hash seed and time): a generated web-server log (8% of
#              the file budget, compresses ~8x), /etc, /usr/share/doc twice, /usr/bin twice (duplicated trees),
#              /usr/share, /usr/lib, copied in sorted order until the files take 66% of SIZE (about 70% used
#              with metadata); the rest is zero. The zero-block fraction (128 KiB blocks) is printed.
#   day2.img   day1 loop-mounted and changed the next day: every 33rd file deleted, every 33rd (offset 11)
#              modified (4 KiB overwritten in the middle, or a line appended), /usr/include copied in (3% of
#              the file bytes) and 1% more log appended; then unmounted.
#   rand.img   SIZE/2 incompressible bytes: AES-128-CTR over zeros with a fixed key (openssl enc).
#   sparse.img 2*SIZE, 3% data: 1 MiB pieces (alternately random and log text) at spread 4 KiB-aligned offsets,
#              holes between.
#
# What is measured, per tool and operation (medians over --runs runs): wall time, CPU time (user+sys of the
# command and its children, via /usr/bin/time), peak RSS, store/repository size after (du -sb), and for
# dumps the bytes on the wire and the remote side's CPU and peak memory. Every timed command starts from a
# flushed state: an untimed `sync` runs right before it, so no command pays for the dirty pages of the one
# before (another tool's store writes, a set-up copy, a removed output); "cold" rows then drop the page cache
# (echo 3 > drop_caches), the same for every tool; "warm" rows read from the page cache, warmed by the same
# untimed pass for every tool (cat of the image, or a first pass of the same fio job). Commands that write a
# store or an output file are timed including a final `sync` (its time is added to the wall time, not to the
# tool's CPU time), so a tool that fsyncs and one that does not are compared on the same terms.
#   ours:    import day 1 into an empty store, then day 2 into the same store; import of rand and sparse;
#            dump over SSH (day 1, day 2, day 2 unchanged, rand, sparse; --compress lz4 and zlib);
#            day 1 and day 2 again with the image in the page cache (also borg); restore -o (sparse output,
#            allocated bytes recorded); mount start-up, sequential dd bs=1M, fio 4 KiB random reads (O_DIRECT,
#            psync, 1 job), 200,000 random 32-byte reads in 64 MiB (warm), fio with 16 jobs (peak memory);
#            verify; gc after deleting day 1's manifest.
#   python:  diskdump 0.1.5 import, dump (the same sshd, through ssh/scp wrappers that pass -F), restore,
#            verify, gc.
#   borg:    init -e none; create --sparse --chunker-params fixed,131072 --compression lz4; extract and
#            extract --sparse; mount -f + dd + fio; check --verify-data; delete day 1 + compact.
#   restic:  backup; restore; mount + dd + fio; check --read-data; forget day 1 --prune.
#   limits:  openssl speed -evp sha256 (128 KiB), lz4 -1 and lz4 -d, cat from page cache and from disk,
#            dd iflag=direct from disk, day 2 written to the stores' disk (cp --sparse + sync),
#            sha256sum, fio and the 32-byte reads on the local image (fio also on a copy on the stores' file
#            system, the disk a mount's cold reads come from), ssh throughput over the same loopback sshd.
# Bytes on the wire: the dumps go to a throwaway sshd on its own 127.0.0.1 port; an nftables table counts
# the packets to and from that port on the output hook of lo (each loopback packet passes it once), so
# other traffic is not counted; bytes are IP packet lengths (payload + ~52 header bytes per packet).
# The remote side's CPU (sshd + agent) is the sshd's cgroup CPU usage (cpuacct or cgroup v2 cpu.stat); its
# peak memory is that of the sshd's memory cgroup (see remote_mem_start below).
# shellcheck disable=SC1007,SC2054  # `a= b=` are empty assignments; commas are in option values
set -euo pipefail
ORIG=$PWD
cd "$(dirname "$0")/.."
REPO=$PWD
HELPER="$REPO/examples/bench.py"

SIZE= RUNS= QUICK=0 MARKDOWN= JSON= ONLY=limits,import,dump,restore,mount,verify,gc
TOOLS=ours,python,borg,restic WORK=/var/tmp/diskdump-bench SCALE=0 FIO_SECS= COLD=1
SCALE_SIZES=1G,2G,4G,8G SCALE_MANIFESTS=1,10,100 BIN= SCALE_HISTORY=32 SCALE_ONLY=sizes,manifests,history

abspath() { case $1 in /*) echo "$1" ;; *) echo "$ORIG/$1" ;; esac; }
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
  case $1 in
    --size) SIZE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --markdown) MARKDOWN=$(abspath "$2"); shift 2 ;;
    --json) JSON=$(abspath "$2"); shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --tools) TOOLS=$2; shift 2 ;;
    --warm) COLD=0; shift ;;
    --fio-seconds) FIO_SECS=$2; shift 2 ;;
    --workdir) WORK=$(abspath "$2"); shift 2 ;;
    --bin) BIN=$(abspath "$2"); shift 2 ;;
    --scale) SCALE=1; shift ;;
    --scale-sizes) SCALE_SIZES=$2; shift 2 ;;
    --scale-manifests) SCALE_MANIFESTS=$2; shift 2 ;;
    --scale-history) SCALE_HISTORY=$2; shift 2 ;;
    --scale-only) SCALE_ONLY=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
if ((QUICK)); then SIZE=${SIZE:-256M} RUNS=${RUNS:-1} FIO_SECS=${FIO_SECS:-3}; fi
SIZE=${SIZE:-2G} RUNS=${RUNS:-3} FIO_SECS=${FIO_SECS:-10}
SIZE_BYTES=$(numfmt --from=iec "$SIZE")
for x in ${ONLY//,/ }; do
  [[ ,limits,import,dump,restore,mount,verify,gc,s3, == *",$x,"* ]] || { echo "--only: unknown part $x" >&2; exit 2; }
done
for x in ${SCALE_ONLY//,/ }; do
  [[ ,sizes,manifests,history, == *",$x,"* ]] || { echo "--scale-only: unknown part $x" >&2; exit 2; }
done
for x in ${TOOLS//,/ }; do
  [[ ,ours,python,borg,restic, == *",$x,"* ]] || { echo "--tools: unknown tool $x" >&2; exit 2; }
done
[[ $(id -u) == 0 ]] || { echo "bench.sh needs root (loop mounts, drop_caches, sshd, FUSE)" >&2; exit 1; }

STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS="$WORK/results/$STAMP"
LOGS="$RESULTS/logs"
RUNS_FILE="$RESULTS/runs.jsonl"
MACHINE_FILE="$RESULTS/machine.json"
MNT="$WORK/mnt"
# Every tool's store, repository and restore output go on a journaled ext4
# made for the run. This kind of VM's root filesystem has no journal, and
# ext4 without one checks recently deleted inodes on every file creation
# (recently_deleted() in its inode allocator): after each `rm -rf` of a
# previous store, the file-per-block stores (ours, the Python diskdump's)
# paid seconds of kernel time that a normal filesystem does not charge
# (measured: 7.8 s of sys on the root fs, 2.9 s on journaled ext4, same import).
FS="$WORK/fs"
if ! mountpoint -q "$FS"; then
  mkdir -p "$FS"
  rm -f "$WORK/fs.img"
  truncate -s $((SIZE_BYTES * 16 + (8 << 30))) "$WORK/fs.img"
  mkfs.ext4 -q -F "$WORK/fs.img"
  mount -o loop "$WORK/fs.img" "$FS"
  # Direct I/O from the loop device to its backing file: without it every block
  # read or written went through two page caches (the loop fs's and the root
  # fs's) and the loop worker's copies; cold `dd` through our mount ran at
  # 615-776 MB/s against 855-966 MB/s with it (2026-12-03), the same for every tool.
  losetup --direct-io=on "$(findmnt -no SOURCE "$FS")" 2>/dev/null ||
    echo "the loop device of $FS refused direct I/O: stores go through two page caches" >&2
fi
LOOP_DIO=$(cat "/sys/block/$(basename "$(findmnt -no SOURCE "$FS")")/loop/dio" 2>/dev/null || echo 0)
STORES="$FS/stores" OUT="$FS/out"
mkdir -p "$LOGS" "$STORES" "$MNT" "$WORK/bin" "$OUT"
SSH_CLIENT_CPU="$WORK/ssh-client-cpu.log" REMOTE_CMD_CPU="$WORK/remote-command-cpu.log"
: >"$SSH_CLIENT_CPU"; : >"$REMOTE_CMD_CPU"
export BORG_BASE_DIR="$WORK/borg-base" BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
  BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=YES \
  RESTIC_PASSWORD=diskdump-bench RESTIC_CACHE_DIR="$WORK/restic-cache"
unset SSH_AUTH_SOCK
SECTION=main RUN=0 MEASURE_OK=0 SSHD_PID= SSH_ERR= MOUNT_PID= MOUNT_TOOL= MOUNT_ERR= MOUNT_FILE= DD= PYDD=
declare -A BROKEN=() PREP_ERR=()

say() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
on() { [[ ",$1," == *",$2,"* ]]; }
family() { echo "${1%% *}"; }
# The last meaningful line of a log (progress bars use \r), for error rows.
last_line() { { tr '\r' '\n' <"$1" | sed 's/\x1b\[[0-9;]*[A-Za-z]//g' | grep -v '^[[:space:]]*$' |
  grep -v '^Command exited with non-zero status' | tail -n 1 | cut -c1-200; } || true; }
calc() { awk "BEGIN{printf \"%.3f\", $*}"; }

# ------------------------------------------------------------------------------------------ setup

install_missing() {
  local need=(borg:borgbackup restic:restic fio:fio lz4:lz4 mkfs.ext4:e2fsprogs /usr/sbin/sshd:openssh-server
    ssh:openssh-client fusermount3:fuse3 /usr/bin/time:time nft:nftables openssl:openssl losetup:mount)
  local missing=() p
  for p in "${need[@]}"; do command -v "${p%%:*}" >/dev/null 2>&1 || missing+=("${p#*:}"); done
  ((${#missing[@]})) || return 0
  say "installing: ${missing[*]}"
  apt-get update -qq >"$LOGS/apt.log" 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >>"$LOGS/apt.log" 2>&1 && return 0
  for p in "${missing[@]}"; do   # one by one, so one missing package does not keep the others out
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >"$LOGS/apt-$p.log" 2>&1 ||
      BROKEN[$p]="apt-get install $p failed: $(last_line "$LOGS/apt-$p.log")"
  done
}

setup_tools() {
  install_missing
  if [[ -n ${BROKEN[borgbackup]:-} ]]; then BROKEN[borg]=${BROKEN[borgbackup]}; fi
  modprobe fuse 2>/dev/null || true
  modprobe loop 2>/dev/null || true
  if [[ -n $BIN ]]; then
    DD=$BIN
  elif on "$TOOLS" ours; then
    say "cargo build --release"
    if cargo build --release >"$LOGS/cargo.log" 2>&1; then
      DD="$REPO/target/release/diskdump"
    else
      BROKEN[ours]="cargo build --release failed: $(last_line "$LOGS/cargo.log")"
    fi
  fi
  PYDD="$WORK/pyvenv/bin/python"
  if on "$TOOLS" python && ! "$PYDD" -c 'import diskdump' 2>/dev/null; then
    say "Python diskdump 0.1.5 into $WORK/pyvenv"
    rm -rf "$WORK/pyvenv"
    if ! python3 -m venv "$WORK/pyvenv" >"$LOGS/venv.log" 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >>"$LOGS/venv.log" 2>&1 || true
      rm -rf "$WORK/pyvenv"
      python3 -m venv "$WORK/pyvenv" >>"$LOGS/venv.log" 2>&1 || true
    fi
    "$WORK/pyvenv/bin/pip" install -q --disable-pip-version-check diskdump==0.1.5 >>"$LOGS/venv.log" 2>&1 ||
      BROKEN[python]="venv + pip install diskdump==0.1.5 failed: $(last_line "$LOGS/venv.log")"
  fi
  # The Python diskdump runs plain `ssh` and `scp`, which read ~/.ssh/config from the passwd home, not
  # $HOME: these wrappers (first in its PATH) point them at the benchmark's sshd config.
  # Both ssh wrappers log the client's CPU time (user sys per line) for the dump rows' CPU split; ours
  # finds `ssh` on PATH and gets the config with --ssh-config.
  printf '#!/bin/sh\nexec /usr/bin/time -a -o %q -f "%%U %%S" /usr/bin/ssh -F %q "$@"\n' "$SSH_CLIENT_CPU" \
    "$WORK/ssh/home/.ssh/config" >"$WORK/bin/ssh"
  printf '#!/bin/sh\nexec /usr/bin/scp -F %q "$@"\n' "$WORK/ssh/home/.ssh/config" >"$WORK/bin/scp"
  mkdir -p "$WORK/bin-ours"
  printf '#!/bin/sh\nexec /usr/bin/time -a -o %q -f "%%U %%S" /usr/bin/ssh "$@"\n' "$SSH_CLIENT_CPU" \
    >"$WORK/bin-ours/ssh"
  chmod +x "$WORK/bin/ssh" "$WORK/bin/scp" "$WORK/bin-ours/ssh"
}

# ------------------------------------------------------------------------------------------ images

# Everything that decides the images' bytes; its hash names the image directory.
image_recipe() { declare -f make_images make_ext4_images; helper_image_code; echo "$1"; }
# The part of bench.py that writes image bytes (not the report code).
helper_image_code() { sed -n '/^# -* deterministic data/,/^# -* records and the report/p' "$HELPER"; }

make_ext4_images() {   # DIR SIZE_BYTES
  local dir=$1 size=$2 uuid=6d1e2c1a-5b3b-4c9e-8f00-d15cd0e0bec4
  rm -rf "$dir/staging"
  python3 "$HELPER" fill "$dir/staging" $((size * 66 / 100))
  E2FSPROGS_FAKE_TIME=1704078000 mkfs.ext4 -q -F -U "$uuid" -E "hash_seed=$uuid,root_owner=0:0" \
    -d "$dir/staging" "$dir/day1.img" "$((size / 1024))k"
  rm -rf "$dir/staging"
  cp --sparse=always "$dir/day1.img" "$dir/day2.img"
  mkdir -p "$dir/mnt"
  mount -o loop "$dir/day2.img" "$dir/mnt"
  python3 "$HELPER" day2 "$dir/mnt" || { umount "$dir/mnt"; return 1; }
  umount "$dir/mnt"
  rmdir "$dir/mnt"
}

make_images() {   # DIR SIZE_BYTES
  local dir=$1 size=$2
  make_ext4_images "$dir" "$size"
  python3 "$HELPER" rand "$dir/rand.img" $((size / 2)) 1
  python3 "$HELPER" synth "$dir/sparse.img" $((size * 2)) 0.03 2
}

ext4_used() {   # percent of the file system's blocks in use
  dumpe2fs -h "$1" 2>/dev/null | awk -F: '/^Block count/{t=$2} /^Free blocks/{f=$2} END{printf "%.0f", 100*(t-f)/t}'
}

prepare_images() {
  local hash dir
  hash=$(image_recipe "$SIZE_BYTES" | sha256sum | cut -c1-12)
  dir="$WORK/images/$SIZE_BYTES-$hash"
  IMG=$dir IMG_HASH=$hash
  if [[ -f $dir/done ]]; then say "images: reusing $dir"; return 0; fi
  for old in "$WORK/images/$SIZE_BYTES"-*; do if [[ -d $old && $old != "$dir" ]]; then rm -rf "$old"; fi; done
  say "images: making them in $dir (recipe $hash)"
  rm -rf "$dir"; mkdir -p "$dir"
  make_images "$dir" "$SIZE_BYTES"
  local f z
  : >"$dir/info"
  for f in day1 day2 rand sparse; do
    read -r z _ _ < <(python3 "$HELPER" zerofrac "$dir/$f.img")
    printf '%s.img %s, %s%% zero 128 KiB blocks, %s allocated%s\n' "$f" \
      "$(numfmt --to=iec "$(stat -c %s "$dir/$f.img")")" "$(awk "BEGIN{printf \"%.1f\", 100 * $z}")" \
      "$(du -h "$dir/$f.img" | cut -f1)" \
      "$([[ $f == day* ]] && echo ", ext4 $(ext4_used "$dir/$f.img")% used")" >>"$dir/info"
  done
  touch "$dir/done"
}

img_size() { stat -c %s "$IMG/$1.img"; }

# ------------------------------------------------------------------------------------------ sshd

start_sshd() {
  local d="$WORK/ssh" i
  mkdir -p "$d/home/.ssh" /run/sshd
  [[ -f $d/host_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -f "$d/host_ed25519" || return 1
  [[ -f $d/client_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -f "$d/client_ed25519" || return 1
  cp "$d/client_ed25519.pub" "$d/authorized_keys"; chmod 644 "$d/authorized_keys"
  SSH_PORT=$(python3 "$HELPER" free-port)
  cat >"$d/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $d/host_ed25519
AuthorizedKeysFile $d/authorized_keys
PidFile $d/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
PermitRootLogin prohibit-password
MaxStartups 100
MaxSessions 100
Subsystem sftp /usr/lib/openssh/sftp-server
ForceCommand $d/remote-timed.sh
EOF
  # Every remote command runs under /usr/bin/time: the agent's CPU (and the Python agent's), apart from
  # sshd's. SFTP (the Python diskdump's scp) passes through untimed.
  cat >"$d/remote-timed.sh" <<EOF
#!/bin/sh
case "\$SSH_ORIGINAL_COMMAND" in
  sftp|internal-sftp) exec /usr/lib/openssh/sftp-server ;;
esac
exec /usr/bin/time -a -o $REMOTE_CMD_CPU -f '%U %S' /bin/sh -c "\$SSH_ORIGINAL_COMMAND"
EOF
  chmod 755 "$d/remote-timed.sh"
  echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$d/host_ed25519.pub")" >"$d/known_hosts"
  cat >"$d/home/.ssh/config" <<EOF
Host benchhost
  HostName 127.0.0.1
  Port $SSH_PORT
  User root
  IdentityFile $d/client_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $d/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
EOF
  /usr/sbin/sshd -t -f "$d/sshd_config" || return 1
  /usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$d/sshd.log" &
  SSHD_PID=$!
  for i in $(seq 100); do
    [[ $(timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SSH_PORT && head -c 4 <&3" 2>/dev/null) == SSH- ]] && break
    sleep 0.05
  done
  cgroup_setup "$SSHD_PID" || say "no cgroup for sshd: remote CPU not measured"
  wire_setup || say "nft counters unavailable: bytes on the wire not measured"
  "$WORK/bin/ssh" benchhost true || { echo "ssh benchhost true failed: $(tail -n 3 "$d/sshd.log")"; return 1; }
}

# Starts the sshd once; on failure SSH_ERR says why (and later calls fail at once).
sshd_ready() {
  [[ -z $SSHD_PID ]] || return 0
  [[ -z $SSH_ERR ]] || return 1
  start_sshd >"$LOGS/sshd-start.log" 2>&1 && return 0
  SSH_ERR="sshd: $(last_line "$LOGS/sshd-start.log")"
  stop_sshd
  return 1
}

stop_sshd() {
  [[ -n ${SSHD_PID:-} ]] || return 0
  kill "$SSHD_PID" 2>/dev/null || true
  wait "$SSHD_PID" 2>/dev/null || true
  SSHD_PID=
}

# Remote CPU: the sshd and every session it forks (the agent too) live in one cgroup.
CG= CG_V=
cgroup_setup() {
  local g
  if [[ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ]]; then
    g=/sys/fs/cgroup/cpuacct/diskdump-bench-$$ CG_V=1
  elif [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    g=/sys/fs/cgroup/diskdump-bench-$$ CG_V=2
  elif [[ -f /sys/fs/cgroup/unified/cgroup.controllers ]]; then
    g=/sys/fs/cgroup/unified/diskdump-bench-$$ CG_V=2
  else return 1; fi
  mkdir -p "$g" || return 1
  CG=$g
  # cgroup v2: with the memory controller, the sshd lives in a child of $CG made afresh for each
  # measurement (a new cgroup's memory.peak starts at zero; $CG's cpu.stat counts its children).
  if ((CG_V == 2)) && echo +memory >"$g/cgroup.subtree_control" 2>/dev/null; then
    memcg_fresh "$1" || { CG=; return 1; }
    if [[ -f $MEMCG/memory.peak ]]; then MEM_MODE=v2; fi   # memory.peak: Linux 5.19
    return 0
  fi
  echo "$1" >"$g/cgroup.procs" || { CG=; return 1; }
  if ((CG_V == 1)); then   # v1: a memory cgroup under our own (so it stays inside any limit we run under)
    local own m
    own=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
    m=/sys/fs/cgroup/memory${own%/}/diskdump-bench-$$
    if [[ -n $own && -f /sys/fs/cgroup/memory$own/memory.max_usage_in_bytes ]] && mkdir -p "$m" &&
      echo "$1" >"$m/cgroup.procs"; then
      MEMCG=$m MEM_MODE=v1
    fi
  fi
  return 0
}
cgroup_cpu() {   # seconds of CPU used by the cgroup so far
  [[ -n $CG ]] || return 0
  if ((CG_V == 1)); then awk '{printf "%.3f", $1/1e9}' "$CG/cpuacct.usage"
  else awk '$1=="usage_usec"{printf "%.3f", $2/1e6}' "$CG/cpu.stat"; fi
}

# Remote memory: the peak of the memory charged to the sshd's cgroup during a command over its level at
# the start: the session's sshd and the agent, and any page cache or socket buffers they charge (the agent
# reads the image with O_DIRECT). v1: memory.max_usage_in_bytes, reset by writing 0; v2: memory.peak of a
# fresh child cgroup. Without a memory cgroup: the largest VmHWM of the agent processes (agent-*) under the
# sshd, polled every 50 ms (bench.py peak-rss).
MEMCG= MEM_MODE= MEM_N=0 MEM_BASE=0 MEM_POLL_PID=
memcg_fresh() {   # PID: moves it into a new child of $CG (v2) and removes the previous one
  local old=$MEMCG new
  MEM_N=$((MEM_N + 1)) new="$CG/m$MEM_N"
  mkdir "$new" || return 1
  if ! echo "$1" >"$new/cgroup.procs"; then rmdir "$new"; return 1; fi
  MEMCG=$new
  if [[ -n $old ]]; then rmdir "$old" 2>/dev/null || true; fi
}
remote_mem_start() {
  MEM_BASE=
  [[ -n $SSHD_PID ]] || return 0
  case $MEM_MODE in
    v1) if echo 0 >"$MEMCG/memory.max_usage_in_bytes"; then MEM_BASE=$(cat "$MEMCG/memory.usage_in_bytes"); fi ;;
    v2) if memcg_fresh "$SSHD_PID"; then MEM_BASE=$(cat "$MEMCG/memory.current"); fi ;;
    *) rm -f "$LOGS/peak-rss"
       python3 "$HELPER" peak-rss "$SSHD_PID" agent- "$LOGS/peak-rss" &
       MEM_POLL_PID=$! ;;
  esac
}
remote_mem_peak() {   # sets RMEM: kB, or empty when not measured
  RMEM=
  [[ -n $SSHD_PID ]] || return 0
  local peak
  case $MEM_MODE in
    v1) [[ -n $MEM_BASE ]] || return 0; peak=$(cat "$MEMCG/memory.max_usage_in_bytes") ;;
    v2) [[ -n $MEM_BASE ]] || return 0; peak=$(cat "$MEMCG/memory.peak") ;;
    *) [[ -n $MEM_POLL_PID ]] || return 0
       kill "$MEM_POLL_PID" 2>/dev/null || true; wait "$MEM_POLL_PID" 2>/dev/null || true; MEM_POLL_PID=
       RMEM=$(cat "$LOGS/peak-rss" 2>/dev/null || true); return 0 ;;
  esac
  RMEM=$(((peak - MEM_BASE) / 1024))
}
remote_mem_info() {
  case $MEM_MODE in
    v1) echo "peak of the sshd's memory cgroup (v1 memory.max_usage_in_bytes) over its level at the start" ;;
    v2) echo "peak of the sshd's memory cgroup (v2 memory.peak, fresh cgroup per command) over its level at the start" ;;
    *) if [[ -n $SSHD_PID ]]; then echo "no memory cgroup: largest VmHWM of the agent processes, polled every 50 ms"
       else echo "not measured"; fi ;;
  esac
}

NFT_TABLE=diskdump_bench_$$ WIRE=0
wire_setup() {
  nft -f - <<EOF || return 1
table inet $NFT_TABLE {
  counter up {}
  counter down {}
  chain out {
    type filter hook output priority 0; policy accept;
    oif "lo" tcp dport $SSH_PORT counter name "up"
    oif "lo" tcp sport $SSH_PORT counter name "down"
  }
}
EOF
  WIRE=1
}
wire_bytes() {   # "<to sshd> <from sshd>" in bytes
  local c
  for c in up down; do
    nft list counter inet "$NFT_TABLE" "$c" | grep -o 'bytes [0-9]*' | cut -d' ' -f2
  done | paste -sd' '
}

# ------------------------------------------------------------------------------------------ measuring

# Untimed, before every timed command (measure, mount_timed): nothing dirty is left for it to flush.
flush() { sync; }
# Gives the blocks freed on the stores' file system back to the work dir's disk: its loop file is sparse
# and ext4 spreads new files over free space, so without this, removed stores and restore outputs keep
# their space and the loop file grows towards its full size (it filled this machine's disk twice).
trim_fs() { fstrim "$FS" 2>/dev/null || true; }
drop_caches() {
  flush
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || { COLD=0; say "cannot drop caches: every row is warm"; }
}

record() { python3 "$HELPER" record "$RUNS_FILE" section="$SECTION" run="$RUN" "$@"; }

# Runs a command untimed for a tool (store set-up); a failure is kept in PREP_ERR and turns the tool's
# following measurements into error rows until its next prep.
prep() {
  local fam=$1 log="$LOGS/prep.log"; shift
  PREP_ERR[$fam]=
  (cd "$IMG" && "$@") >"$log" 2>&1 || PREP_ERR[$fam]="set-up failed ($*): $(last_line "$log")"
  trim_fs
}

# measure GROUP TOOL [--cache cold|warm] [--store DIR] [--bytes N] [--wire] [--sync] [--cd DIR]
#         [--out DIR] [--cmp A B] [--daemon PID] [--post FUNC] -- COMMAND...
# Times COMMAND once (run $RUN) and appends a record; on failure the record carries the error.
measure() {
  local group=$1 tool=$2; shift 2
  local cache=cold store= bytes= wire=0 sync=0 cwd=$IMG out= cmp_a= cmp_b= daemon= post=
  while [[ $1 != -- ]]; do
    case $1 in
      --cache) cache=$2; shift 2 ;; --store) store=$2; shift 2 ;; --bytes) bytes=$2; shift 2 ;;
      --wire) wire=1; shift ;; --sync) sync=1; shift ;; --cd) cwd=$2; shift 2 ;; --out) out=$2; shift 2 ;;
      --cmp) cmp_a=$2 cmp_b=$3; shift 3 ;; --daemon) daemon=$2; shift 2 ;; --post) post=$2; shift 2 ;;
      *) echo "measure: bad option $1" >&2; return 2 ;;
    esac
  done
  shift
  local fam; fam=$(family "$tool")
  local log="$LOGS/$(echo "$SECTION-$group-$tool-$RUN" | tr -c 'A-Za-z0-9.-' '_').log" tf="$LOGS/time.out"
  [[ $cache == warm ]] || cache=$(cold_label)
  local base=(group="$group" tool="$tool" cache="$cache")
  local err=${BROKEN[$fam]:-${PREP_ERR[$fam]:-}}
  MEASURE_OK=0
  if [[ -n $err ]]; then record "${base[@]}" error="$err"; say "$group / $tool: n/a: $err"; return 0; fi
  [[ -z $out ]] || { rm -rf "$out"; mkdir -p "$out"; }
  if [[ $cache == cold ]]; then drop_caches; else flush; fi
  local w0=(0 0) r0= d0=
  ((wire && WIRE)) && read -r -a w0 < <(wire_bytes)
  ((wire)) && r0=$(cgroup_cpu)
  local c0 a0; c0=$(sum_cpu_log "$SSH_CLIENT_CPU") a0=$(sum_cpu_log "$REMOTE_CMD_CPU")
  [[ -n $daemon ]] && d0=$(proc_cpu "$daemon")
  if ((wire)); then remote_mem_start 2>>"$LOGS/remote-mem.log" || true; fi
  local rc=0
  /usr/bin/time -f '%e %U %S %M' -o "$tf" -- bash -c 'cd "$0" && "$@"' "$cwd" "$@" >"$log" 2>&1 || rc=$?
  local rmem= RMEM=; if ((wire)); then remote_mem_peak 2>>"$LOGS/remote-mem.log" || true; rmem=$RMEM; fi
  if ((rc)); then
    err="$(last_line "$log") (exit $rc)"
    record "${base[@]}" error="$err"; say "$group / $tool: FAILED: $err"; return 0
  fi
  local wall user sys rss
  read -r wall user sys rss < <(tail -n 1 "$tf")
  local cpu; cpu=$(calc "$user + $sys")
  local extra=()
  if ((sync)); then   # the flush counts in the wall time, not in the tool's CPU time
    local s0 s1; s0=$(date +%s.%N); sync; s1=$(date +%s.%N)
    extra+=(sync_s="$(calc "$s1 - $s0")"); wall=$(calc "$wall + $s1 - $s0")
  fi
  if ((wire && WIRE)); then
    local w1; read -r -a w1 < <(wire_bytes)
    extra+=(wire_up=$((w1[0] - w0[0])) wire_down=$((w1[1] - w0[1])) wire_bytes=$((w1[0] - w0[0] + w1[1] - w0[1])))
  fi
  [[ -z $r0 ]] || extra+=(remote_cpu="$(calc "$(cgroup_cpu) - $r0")")
  if ((wire)); then   # the split: the ssh client (inside CPU s) and the remote command (inside remote CPU)
    extra+=(ssh_cpu="$(calc "$(sum_cpu_log "$SSH_CLIENT_CPU") - $c0")")
    extra+=(agent_cpu="$(calc "$(sum_cpu_log "$REMOTE_CMD_CPU") - $a0")")
  fi
  [[ -z $rmem ]] || extra+=(remote_rss_kb="$rmem")
  if [[ -n $daemon ]]; then   # a FUSE daemon's CPU counts with the reader's; its peak RSS is the row's
    cpu=$(calc "$cpu + $(proc_cpu "$daemon") - $d0")
    rss=$(awk '/^VmHWM/{print $2}' "/proc/$daemon/status" 2>/dev/null || echo "$rss")
  fi
  [[ -n $store ]] && extra+=(store_bytes="$(du -sb "$store" | cut -f1)")
  [[ -n $bytes ]] && extra+=(bytes="$bytes")
  [[ -n $out ]] && extra+=(alloc_bytes="$(du -sB1 "$out" | cut -f1)")
  if [[ -n $cmp_a ]] && ! cmp -s "$cmp_a" "$cmp_b"; then
    err="output differs from the source image ($cmp_b)"
  fi
  if [[ -n $post ]]; then local more; read -r -a more < <("$post" "$log"); extra+=("${more[@]}"); fi
  [[ -z $out ]] || { rm -rf "$out"; trim_fs; }
  if [[ -n $err ]]; then record "${base[@]}" error="$err"; say "$group / $tool: FAILED: $err"; return 0; fi
  record "${base[@]}" wall="$wall" user="$user" sys="$sys" cpu="$cpu" rss_kb="$rss" "${extra[@]}"
  MEASURE_OK=1
  say "$group / $tool: ${wall}s wall, ${cpu}s CPU, $((rss / 1024)) MiB${rmem:+ (+$((rmem / 1024)) MiB remote)}"
}

sum_cpu_log() {   # seconds of CPU in a /usr/bin/time -f "%U %S" log (other lines ignored)
  awk '$1 ~ /^[0-9.]+$/ && $2 ~ /^[0-9.]+$/ {s += $1 + $2} END {printf "%.3f", s}' "$1" 2>/dev/null || echo 0
}

proc_cpu() {   # seconds of CPU (user+sys) of a live process
  awk -v t="$(getconf CLK_TCK)" '{printf "%.3f", ($14+$15)/t}' "/proc/$1/stat" 2>/dev/null || echo 0
}

# ------------------------------------------------------------------------------------------ the tools
# Each cmd_* function sets CMD for one tool; the phases below time them with measure (in the image
# directory, so borg and restic archive plain file names; restores run in their output directory).

declare -A DATES=([day1]=2024-01-01T03:00:00Z [day2]=2024-01-02T03:00:00Z [rand]=2024-01-03T03:00:00Z
  [sparse]=2024-01-04T03:00:00Z)
declare -A LABEL=([ours]=ours [python]="python 0.1.5" [borg]=borg [restic]=restic)

store_of() { case $2 in day1|day2) echo "$STORES/$1" ;; *) echo "$STORES/$1-$2" ;; esac; }

cmd_init() {   # TOOL STORE
  case $1 in
    ours) CMD=(bash -c 'rm -rf "$1" && "$2" init "$1" >/dev/null' _ "$2" "$DD") ;;
    python) CMD=(rm -rf "$2") ;;
    borg) CMD=(bash -c 'rm -rf "$1" && borg init -e none "$1"' _ "$2") ;;
    restic) CMD=(bash -c 'rm -rf "$1" && restic -q -r "$1" init' _ "$2") ;;
  esac
}

cmd_backup() {   # TOOL STORE KIND
  local img="$IMG/$3.img"
  case $1 in
    ours) CMD=("$DD" --store "$2" import "$img" --as bench --date "${DATES[$3]}") ;;
    python) CMD=(env DISKDUMP_BASE="$2" "$PYDD" -m diskdump import "$img" --as bench:/dev/vda --date "${DATES[$3]}") ;;
    borg) CMD=(borg create --sparse --chunker-params fixed,131072 --compression lz4 "$2::$3" "$3.img") ;;
    restic) CMD=(restic -r "$2" backup --tag "$3" "$3.img") ;;
  esac
}

cmd_restore() {   # TOOL STORE KIND OUTDIR [sparse]
  local latest
  case $1 in
    ours) CMD=("$DD" --store "$2" restore bench -o "$4/$3.img") ;;
    python)
      latest=$(ls "$2/.blockstore/manifests/bench.vda" 2>/dev/null | sort -n | tail -n 1)
      CMD=(env DISKDUMP_BASE="$2" "$PYDD" -m diskdump restore "bench.vda/${latest:-0.manifest}" -o "$4/$3.img") ;;
    borg) CMD=(borg extract ${5:+--sparse} "$2::$3") ;;
    restic) CMD=(restic -r "$2" restore latest --tag "$3" --target "$4") ;;
  esac
}

cmd_verify() {
  case $1 in
    ours) CMD=("$DD" --store "$2" verify) ;;
    python) CMD=(env DISKDUMP_BASE="$2" "$PYDD" -m diskdump verify) ;;
    borg) CMD=(borg check --verify-data "$2") ;;
    restic) CMD=(restic -r "$2" check --read-data) ;;
  esac
}

# borg and restic keep state per repository ID outside the repository (borg refuses a repository older
# than its cache), so a copy of one gets a copy of that state too.
cmd_gc_prepare() {   # TOOL STORE GCSTORE: a copy of the store without day 1
  case $1 in
    # Day 1 deleted a while ago: gc leaves blocks younger than a minute alone.
    ours) CMD=(bash -c 'rm -rf "$2" && cp -a "$1" "$2" && rm "$2"/2024/01/01/bench.manifest && find "$2/.blockstore" -name "*.lz4" -exec touch -d "1 hour ago" {} +' _ "$2" "$3") ;;
    python) CMD=(bash -c 'rm -rf "$2" && cp -a "$1" "$2" && rm "$2"/.blockstore/manifests/bench.vda/0.manifest' _ "$2" "$3") ;;
    borg) CMD=(bash -c 'rm -rf "$2" "$2.base" && cp -a "$1" "$2" && cp -a "$BORG_BASE_DIR" "$2.base"' _ "$2" "$3") ;;
    restic) CMD=(bash -c 'rm -rf "$2" "$2.cache" && cp -a "$1" "$2" && cp -a "$RESTIC_CACHE_DIR" "$2.cache"' _ "$2" "$3") ;;
  esac
}

cmd_gc() {   # TOOL GCSTORE
  case $1 in
    ours) CMD=("$DD" --store "$2" gc) ;;
    python) CMD=(env DISKDUMP_BASE="$2" "$PYDD" -m diskdump gc) ;;
    borg) CMD=(env BORG_BASE_DIR="$2.base" bash -c 'borg delete "$1::day1" && borg compact "$1"' _ "$2") ;;
    restic) CMD=(env RESTIC_CACHE_DIR="$2.cache" bash -c 'id=$(restic -r "$1" snapshots --tag day1 --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0][\"id\"])") && restic -r "$1" forget "$id" --prune' _ "$2") ;;
  esac
}

cmd_mount() {   # TOOL STORE MOUNTPOINT; sets MOUNT_FILE, the day-2 image inside the mount
  case $1 in
    ours) CMD=("$DD" mount "$2" "$3"); MOUNT_FILE="$3/2024/01/02/bench.img" ;;
    borg) CMD=(borg mount -f "$2::day2" "$3"); MOUNT_FILE="$3/day2.img" ;;
    restic) CMD=(restic -r "$2" mount "$3"); MOUNT_FILE="$3/tags/day2/latest/day2.img" ;;
  esac
}

cmd_dump() {   # TOOL STORE IMAGE COMPRESS [TRANSPORT]
  local target="benchhost:$3"
  case $1 in
    ours) CMD=(env HOME="$WORK/ssh/home" PATH="$WORK/bin-ours:$PATH" DISKDUMP_TRANSPORT="${5:-openssh}"
      "$DD" --store "$2" dump "$target" --as bench --compress "$4" --ssh-config "$WORK/ssh/home/.ssh/config") ;;
    python) CMD=(env PATH="$WORK/bin:$PATH" DISKDUMP_BASE="$2" "$PYDD" -m diskdump dump "$target" --as bench) ;;
  esac
}

# ------------------------------------------------------------------------------------------ phases

declare -A GROUP_BACKUP=([day1]="backup day 1 (empty store)" [day2]="backup day 2 (next day, same store)"
  [rand]="backup random (incompressible)" [sparse]="backup sparse (3% data)")
declare -A GROUP_DUMP=([day1]="dump day 1 over SSH (empty store)" [day2]="dump day 2 over SSH (next day)"
  [day2-again]="dump day 2 again (unchanged)" [rand]="dump random over SSH" [sparse]="dump sparse over SSH")
declare -A GROUP_RESTORE=([day2]="restore day 2" [rand]="restore random" [sparse]="restore sparse")

# The stores the read phases use: day 1 + day 2 in one store, rand and sparse in their own. Timed in
# the import phase; made untimed when a later phase needs them and they are not there for these images.
backup_all() {   # TOOL timed|untimed
  local tool=$1 kind store ok=1
  rm -f "$STORES/$tool.ready"
  for kind in day1 day2 rand sparse; do
    store=$(store_of "$tool" "$kind")
    if [[ $kind != day2 ]]; then cmd_init "$tool" "$store"; prep "$tool" "${CMD[@]}"; fi
    cmd_backup "$tool" "$store" "$kind"
    if [[ $2 == timed ]]; then
      measure "${GROUP_BACKUP[$kind]}" "${LABEL[$tool]}" --store "$store" --bytes "$(img_size "$kind")" --sync \
        -- "${CMD[@]}"
      ((MEASURE_OK)) || ok=0
    else
      prep "$tool" "${CMD[@]}"
      [[ -z ${PREP_ERR[$tool]} ]] || ok=0
    fi
  done
  if ((ok)); then echo "$IMG_HASH" >"$STORES/$tool.ready"; fi
}

ensure_stores() {   # TOOL
  local k
  [[ -z ${BROKEN[$1]:-} ]] || return 0
  PREP_ERR[$1]=
  if [[ $1 == restic ]]; then   # stale locks of an interrupted earlier run would fail every command
    for k in day2 rand sparse; do restic -r "$(store_of restic $k)" unlock >/dev/null 2>&1 || true; done
  fi
  [[ $(cat "$STORES/$1.ready" 2>/dev/null) != "$IMG_HASH" ]] || return 0
  say "making the $1 stores (untimed)"
  local RUN=0; backup_all "$1" untimed
}

tools_in() { local t; for t in ${TOOLS//,/ }; do on "$1" "$t" && echo "$t"; done; }

phase_limits() {
  local img="$IMG/day1.img" size; size=$(img_size day1)
  for RUN in $(seq "$RUNS"); do
    measure "SHA-256, 128 KiB blocks, 1 core (openssl speed)" openssl --cache warm --post post_openssl \
      -- openssl speed -evp sha256 -bytes 131072 -seconds 3
    cat "$img" >/dev/null
    measure "lz4 -1 compress, 1 core (day 1)" lz4 --cache warm --bytes "$size" \
      -- bash -c 'lz4 -1 -c "$1" >/dev/null' _ "$img"
    lz4 -q -1 -f "$img" "$OUT/day1.img.lz4"
    measure "lz4 -d decompress, 1 core (day 1)" lz4 --cache warm --bytes "$size" \
      -- bash -c 'lz4 -d -c "$1" >/dev/null' _ "$OUT/day1.img.lz4"
    rm -f "$OUT/day1.img.lz4"
    cat "$img" >/dev/null
    measure "cat from page cache (day 1)" cat --cache warm --bytes "$size" -- bash -c 'cat "$1" >/dev/null' _ "$img"
    measure "cat from disk (day 1)" cat --bytes "$size" -- bash -c 'cat "$1" >/dev/null' _ "$img"
    measure "dd iflag=direct from disk (day 1)" dd --bytes "$size" \
      -- dd if="$img" of=/dev/null bs=4M iflag=direct status=none
    # The floor of any restore: day 2's data written to the stores' disk.
    cat "$IMG/day2.img" >/dev/null
    measure "write day 2 to disk (cp --sparse, sync)" cp --cache warm --out "$OUT/limit" --sync \
      --bytes "$(img_size day2)" -- cp --sparse=always "$IMG/day2.img" "$OUT/limit/day2.img"
    rm -rf "$OUT/limit"
    cat "$img" >/dev/null
    measure "sha256sum, 1 core (day 1)" sha256sum --cache warm --bytes "$size" -- sha256sum "$img"
    measure "fio 4 KiB random reads, local day 2 image" fio --post post_fio -- "${FIO[@]}" --filename="$IMG/day2.img"
    # The same on the stores' file system (the loop-mounted ext4): the disk a mount's cold reads come from.
    cp --sparse=always "$IMG/day2.img" "$OUT/day2-raw.img"
    measure "fio 4 KiB random reads, day 2 image on the stores' file system" fio --post post_fio \
      -- "${FIO[@]}" --filename="$OUT/day2-raw.img"
    rm -f "$OUT/day2-raw.img"; trim_fs
    small_reads "$G_SMALL, local image" fio "$IMG/day2.img"
    sshd_ready || PREP_ERR[ssh]=$SSH_ERR
    cat "$IMG/rand.img" >/dev/null
    measure "ssh loopback throughput (cat random image)" ssh --cache warm --wire --bytes "$(img_size rand)" \
      -- bash -c '"$1" benchhost cat "$2" >/dev/null' _ "$WORK/bin/ssh" "$IMG/rand.img"
  done
}

post_openssl() {   # the 131072-byte column of the sha256 line, in thousands of bytes per second
  awk '$1 == "sha256" {v=$NF; sub("k", "", v); printf "rate=%.0f\n", v * 1000}' "$1"
}
post_fio() { echo "iops=$(python3 "$HELPER" fio-iops "$LOGS/fio.json")"; }
FIO=(fio --name=randread --readonly --rw=randread --bs=4k --direct=1 --runtime="$FIO_SECS" --time_based
  --ioengine=psync --group_reporting --output-format=json --output="$LOGS/fio.json")
# What fsck, a loop device or a VM does: many small reads. Timed warm, after an untimed first pass.
SMALL=(fio --name=small --readonly --rw=randread --bs=32 --size=64M --number_ios=200000 --norandommap --randrepeat=1
  --ioengine=psync --output-format=json --output="$LOGS/small.json")
G_SMALL="32-byte random reads x200,000 in 64 MiB, warm (day 2)"
small_reads() {   # GROUP TOOL FILE [measure options...]
  local group=$1 tool=$2 file=$3; shift 3
  "${SMALL[@]}" --filename="$file" >/dev/null 2>&1 || true
  measure "$group" "$tool" --cache warm "$@" -- "${SMALL[@]}" --filename="$file"
}

phase_import() {
  local tool
  for RUN in $(seq "$RUNS"); do
    for tool in $(tools_in ours,python,borg,restic); do backup_all "$tool" timed; done
    import_warm
  done
}

# Day 1 and day 2 with the image in the page cache (a backup right after the image was written or
# checked), into a store of their own.
import_warm() {
  local tool kind store
  for tool in $(tools_in ours,borg); do
    store="$STORES/warm-$tool"
    cmd_init "$tool" "$store"; prep "$tool" "${CMD[@]}"
    for kind in day1 day2; do
      cat "$IMG/$kind.img" >/dev/null
      cmd_backup "$tool" "$store" "$kind"
      measure "${GROUP_BACKUP[$kind]}, image in page cache" "${LABEL[$tool]}" --cache warm --store "$store" \
        --bytes "$(img_size "$kind")" --sync -- "${CMD[@]}"
    done
    rm -rf "$store"
  done
}

phase_dump() {
  local tool comp label kind store variant transport
  sshd_ready || true
  for RUN in $(seq "$RUNS"); do
    for tool in $(tools_in ours,python); do
      # ours: lz4 over OpenSSH (the default), lz4 over libssh2, zlib over OpenSSH
      # ($DUMP_VARIANTS picks some, e.g. DUMP_VARIANTS=lz4/openssh for a short run).
      for variant in ${DUMP_VARIANTS:-lz4/openssh lz4/libssh2 zlib/openssh}; do
        comp=${variant%/*} transport=${variant#*/}
        [[ $tool == python && $variant != lz4/openssh ]] && continue
        label=${LABEL[$tool]}; [[ $tool == ours && $comp != lz4 ]] && label="ours ($comp)"
        [[ $tool == ours && $transport != openssh ]] && label="ours ($transport)"
        [[ $tool == python ]] && label="python 0.1.5 (zlib)"
        store="$STORES/dump-$tool-$comp-$transport"
        for kind in day1 day2 day2-again rand sparse; do
          case $kind in day1|rand|sparse) rm -rf "$store"; [[ $tool == ours ]] && "$DD" init "$store" >/dev/null ;; esac
          PREP_ERR[$tool]=$SSH_ERR
          cmd_dump "$tool" "$store" "$IMG/${kind%-again}.img" "$comp" "$transport"
          measure "${GROUP_DUMP[$kind]}" "$label" --store "$store" --wire --sync \
            --bytes "$(img_size "${kind%-again}")" -- "${CMD[@]}"
        done
      done
    done
  done
  rm -rf "$STORES"/dump-*
  PREP_ERR[ours]= PREP_ERR[python]=
}

phase_restore() {
  local tool kind out="$OUT/restore" variants v
  for tool in $(tools_in ours,python,borg,restic); do ensure_stores "$tool"; done
  for RUN in $(seq "$RUNS"); do
    for tool in $(tools_in ours,python,borg,restic); do
      variants=(""); [[ $tool == borg ]] && variants=("" sparse)
      for kind in day2 rand sparse; do
        for v in "${variants[@]}"; do
          cmd_restore "$tool" "$(store_of "$tool" "$kind")" "$kind" "$out" "$v"
          measure "${GROUP_RESTORE[$kind]}" "${LABEL[$tool]}${v:+ --sparse}" --out "$out" --cd "$out" --sync \
            --bytes "$(img_size "$kind")" --cmp "$IMG/$kind.img" "$out/$kind.img" -- "${CMD[@]}"
        done
      done
    done
  done
}

phase_verify() {
  local tool
  for tool in $(tools_in ours,python,borg,restic); do ensure_stores "$tool"; done
  for RUN in $(seq "$RUNS"); do
    for tool in $(tools_in ours,python,borg,restic); do
      cmd_verify "$tool" "$(store_of "$tool" day2)"
      measure "verify (day 1 + day 2 store)" "${LABEL[$tool]}" -- "${CMD[@]}"
    done
  done
}

phase_gc() {
  local tool gcs="$STORES/gc"
  for tool in $(tools_in ours,python,borg,restic); do ensure_stores "$tool"; done
  for RUN in $(seq "$RUNS"); do
    for tool in $(tools_in ours,python,borg,restic); do
      cmd_gc_prepare "$tool" "$(store_of "$tool" day2)" "$gcs"; prep "$tool" "${CMD[@]}"
      cmd_gc "$tool" "$gcs"
      measure "gc after deleting day 1" "${LABEL[$tool]}" --store "$gcs" --sync -- "${CMD[@]}"
    done
  done
  rm -rf "$gcs" "$gcs.base" "$gcs.cache"
}

# Starts a FUSE daemon and waits until MOUNT_FILE is there; sets MOUNT_PID, or MOUNT_ERR on failure.
mount_start() {   # TOOL STORE [FILE to wait for instead of the day-2 image]
  MOUNT_ERR= MOUNT_PID= MOUNT_TOOL=$1
  umount -l "$MNT" 2>/dev/null || true   # a dead mount left by an earlier run
  cmd_mount "$1" "$2" "$MNT"
  MOUNT_FILE=${3:-$MOUNT_FILE}
  local log="$LOGS/mount-$1.log" i
  (cd "$IMG" && exec "${CMD[@]}") >"$log" 2>&1 &
  MOUNT_PID=$!
  for ((i = 0; i < 6000; i++)); do
    [[ -e $MOUNT_FILE ]] && return 0
    kill -0 "$MOUNT_PID" 2>/dev/null || { wait "$MOUNT_PID" 2>/dev/null || true; break; }
    sleep 0.02
  done
  MOUNT_ERR="mount did not show $MOUNT_FILE: $(last_line "$log")"
  mount_stop
  return 1
}

# Ours unmounts on SIGTERM; borg and restic exit when unmounted (killing them leaves a stale lock).
mount_stop() {
  [[ -n $MOUNT_PID ]] || return 0
  local i
  if [[ $MOUNT_TOOL == ours ]] || ! umount "$MNT" 2>/dev/null; then kill -TERM "$MOUNT_PID" 2>/dev/null || true; fi
  for ((i = 0; i < 150; i++)); do kill -0 "$MOUNT_PID" 2>/dev/null || break; sleep 0.1; done
  umount -l "$MNT" 2>/dev/null || true
  kill -KILL "$MOUNT_PID" 2>/dev/null || true
  wait "$MOUNT_PID" 2>/dev/null || true
  MOUNT_PID=
}

cold_label() { if ((COLD)); then echo cold; else echo "warm (no drop)"; fi; }

# Starts TOOL's mount from cold caches and records the time until FILE is listed; on failure records
# the error and returns 1 with MOUNT_ERR set.
mount_timed() {   # TOOL STORE GROUP LABEL [FILE]
  local t0 t1
  MOUNT_ERR=${BROKEN[$1]:-${PREP_ERR[$1]:-}}
  if [[ -z $MOUNT_ERR ]]; then
    if ((COLD)); then drop_caches; else flush; fi
    t0=$(date +%s.%N)
    if mount_start "$1" "$2" "${5:-}"; then
      t1=$(date +%s.%N)
      record group="$3" tool="$4" cache="$(cold_label)" wall="$(calc "$t1 - $t0")" cpu="$(proc_cpu "$MOUNT_PID")" \
        rss_kb="$(awk '/^VmHWM/{print $2}' "/proc/$MOUNT_PID/status")"
      say "$3 / $4: $(calc "$t1 - $t0")s"
      return 0
    fi
  fi
  record group="$3" tool="$4" cache="$(cold_label)" error="$MOUNT_ERR"
  say "$3 / $4: n/a: $MOUNT_ERR"
  return 1
}

phase_mount() {
  local tool label store size; size=$(img_size day2)
  local g_start="mount: start-up until the day-2 image is listed" g_dd="mount: sequential read, dd bs=1M (day 2)"
  local g_fio="mount: 4 KiB random reads, fio ${FIO_SECS}s (day 2)"
  local g_fio16="mount: 4 KiB random reads, 16 fio jobs, ${FIO_SECS}s (day 2; the daemon's peak memory)"
  for tool in $(tools_in ours,borg,restic); do ensure_stores "$tool"; done
  for RUN in $(seq "$RUNS"); do
    for tool in $(tools_in ours,borg,restic); do
      label=${LABEL[$tool]} store=$(store_of "$tool" day2)
      if ! mount_timed "$tool" "$store" "$g_start" "$label"; then
        record group="$g_dd" tool="$label" cache="$(cold_label)" error="$MOUNT_ERR"
        record group="$g_fio" tool="$label" cache="$(cold_label)" error="$MOUNT_ERR"
        record group="$G_SMALL" tool="$label" cache=warm error="$MOUNT_ERR"
        continue
      fi
      measure "$g_dd" "$label" --bytes "$size" --daemon "$MOUNT_PID" -- dd if="$MOUNT_FILE" of=/dev/null bs=1M
      mount_stop
      # A fresh daemon for the random reads, so the sequential pass left nothing in its cache.
      if mount_start "$tool" "$store"; then
        measure "$g_fio" "$label" --daemon "$MOUNT_PID" --post post_fio -- "${FIO[@]}" --filename="$MOUNT_FILE"
        small_reads "$G_SMALL" "$label" "$MOUNT_FILE" --daemon "$MOUNT_PID"
        measure "$g_fio16" "$label" --cache warm --daemon "$MOUNT_PID" --post post_fio \
          -- "${FIO[@]}" --numjobs=16 --filename="$MOUNT_FILE"
        mount_stop
      else
        record group="$g_fio" tool="$label" cache="$(cold_label)" error="$MOUNT_ERR"
      fi
    done
  done
}

# ------------------------------------------------------------------------------------------ scale

# The work dir must hold the synthetic images still to be made (25% of each size is data, the rest holes)
# and, on the benchmark's ext4, one size's stores and restore output at a time (about half the size: a store
# keeps the random half of the data as is and the text half compressed, the restore output is as sparse as
# the image); the loop file under it is trimmed after each size.
scale_check_room() {   # RECIPE
  local s bytes max=0 images=0 need fs_need avail fs_avail
  for s in ${SCALE_SIZES//,/ }; do
    bytes=$(numfmt --from=iec "$s")
    ((bytes > max)) && max=$bytes
    [[ -f $WORK/scale/synth-$bytes-$1.img ]] || images=$((images + bytes / 4))
  done
  [[ -f $WORK/scale/small-$1.img ]] || images=$((images + (128 << 20)))
  fs_need=$((max / 2 + (256 << 20))) need=$((images + max / 2 + (1 << 30)))
  avail=$(df -B1 --output=avail "$WORK" | tail -n 1) fs_avail=$(df -B1 --output=avail "$FS" | tail -n 1)
  if ((avail < need || fs_avail < fs_need)); then
    echo "bench.sh --scale: not enough disk space for --scale-sizes $SCALE_SIZES:" >&2
    echo "  $WORK needs $(numfmt --to=iec "$need") free (synthetic images $(numfmt --to=iec "$images")," \
      "stores and restore output of the largest size $(numfmt --to=iec $((max / 2))), 1 GiB spare)," \
      "has $(numfmt --to=iec "$avail")" >&2
    echo "  $FS needs $(numfmt --to=iec "$fs_need"), has $(numfmt --to=iec "$fs_avail")" >&2
    echo "  free some space, or use --workdir on a larger disk or smaller --scale-sizes" >&2
    exit 1
  fi
}

phase_scale() {
  SECTION=scale
  local s bytes img dir="$WORK/scale" store="$STORES/scale" dstore="$STORES/scale-dump" out="$OUT/scale" n have k
  local recipe; recipe=$(helper_image_code | sha256sum | cut -c1-12)
  on "$SCALE_ONLY" sizes || SCALE_SIZES=
  scale_check_room "$recipe"
  mkdir -p "$dir"
  [[ -z $SCALE_SIZES ]] || sshd_ready || true
  for s in ${SCALE_SIZES//,/ }; do
    bytes=$(numfmt --from=iec "$s"); img="$dir/synth-$bytes-$recipe.img"
    if [[ ! -f $img ]]; then   # 25% data (random and text in turn), the rest holes
      say "scale: making $img"
      python3 "$HELPER" synth "$img.tmp" "$bytes" 0.25 3 && mv "$img.tmp" "$img"
    fi
    for RUN in $(seq "$RUNS"); do
      rm -rf "$store" "$dstore"
      "$DD" init "$store" >/dev/null && "$DD" init "$dstore" >/dev/null
      measure "import, $s image (25% data)" ours --store "$store" --bytes "$bytes" --sync \
        -- "$DD" --store "$store" import "$img" --as scale --date 2024-01-01T03:00:00Z
      measure "restore, $s image" ours --out "$out" --bytes "$bytes" --sync \
        -- "$DD" --store "$store" restore scale -o "$out/scale.img"
      # Start-up, then a cold sequential read through the FUSE daemon; its peak RSS is the row's.
      if mount_timed ours "$store" "mount: start-up, $s image" ours "$MNT/2024/01/01/scale.img"; then
        measure "mount: dd bs=1M, $s image" ours --bytes "$bytes" --daemon "$MOUNT_PID" \
          -- dd if="$MOUNT_FILE" of=/dev/null bs=1M
        mount_stop
      else
        record group="mount: dd bs=1M, $s image" tool=ours cache="$(cold_label)" error="$MOUNT_ERR"
      fi
      # Over the loopback sshd into an empty store, as the dump phase does (wire bytes, remote CPU and memory).
      PREP_ERR[ours]=$SSH_ERR
      cmd_dump ours "$dstore" "$img" lz4
      measure "dump over SSH, $s image (25% data)" ours --store "$dstore" --wire --sync --bytes "$bytes" \
        -- "${CMD[@]}"
      PREP_ERR[ours]=
    done
    rm -rf "$store" "$dstore"
    trim_fs
  done
  on "$SCALE_ONLY" manifests || return 0
  # Many manifests: the same small image imported on different days.
  img="$dir/small-$recipe.img"
  [[ -f $img ]] || python3 "$HELPER" synth "$img" $((256 << 20)) 0.5 4
  rm -rf "$store"; have=0; "$DD" init "$store" >/dev/null
  for n in ${SCALE_MANIFESTS//,/ }; do
    for ((k = have + 1; k <= n; k++)); do
      "$DD" --store "$store" import "$img" --as many --date "$(date -u -d "2020-01-01 + $k days" +%F)" \
        >"$LOGS/scale-import.log" 2>&1 || BROKEN[ours]="import --date failed: $(last_line "$LOGS/scale-import.log")"
    done
    have=$n
    local last; last=$(date -u -d "2020-01-01 + $n days" +%Y/%m/%d)
    local m="$n manifests"; ((n != 1)) || m="1 manifest"
    for RUN in $(seq "$RUNS"); do
      measure "status, $m (256M image each)" ours -- "$DD" --store "$store" status
      measure "gc --dry-run, $m" ours -- "$DD" --store "$store" gc --dry-run
      measure "verify, $m" ours -- "$DD" --store "$store" verify
      if mount_timed ours "$store" "mount: start-up, $m" ours "$MNT/$last/many.img"; then mount_stop; fi
    done
  done
  rm -rf "$store"
}

# A realistic history: SCALE_HISTORY daily dumps of one disk with 2% of its bytes rewritten each day.
phase_history() {
  SECTION=history
  local days=$SCALE_HISTORY store="$STORES/history" gcs="$STORES/history-gc" k d size files first last
  ((days >= 2)) || return 0
  prepare_images   # IMG: the --size images; day1.img is the disk on day 1
  local img="$WORK/history.img"
  size=$(img_size day1)
  rm -rf "$store"; "$DD" init "$store" >/dev/null
  cp --sparse=always "$IMG/day1.img" "$img"
  for ((k = 1; k <= days; k++)); do
    ((k == 1)) || python3 "$HELPER" mutate "$img" 0.02 "$k"
    d=$(date -u -d "2024-01-01 + $((k - 1)) days" +%F)
    local g="history: import, days 2-$((days - 1)) (2% changed each day)"
    ((k == 1)) && g="history: import, day 1"
    ((k == days)) && g="history: import, day $days"
    RUN=$k
    measure "$g" ours --store "$store" --bytes "$size" --sync \
      -- "$DD" --store "$store" import "$img" --as hist --date "${d}T03:00:00Z"
  done
  rm -f "$img"
  last="$MNT/$(date -u -d "2024-01-01 + $((days - 1)) days" +%Y/%m/%d)/hist.img"
  for RUN in $(seq "$RUNS"); do
    if mount_timed ours "$store" "history: mount start-up, $days dumps" ours "$last"; then
      measure "history: ls -lR of the mount, $days dumps" ours --daemon "$MOUNT_PID" -- ls -lR "$MNT"
      files=$(find "$MNT" -name '*.img' | sort | paste -sd:)
      measure "history: 4 KiB random reads over all $days images at once, 4 fio jobs, ${FIO_SECS}s" ours \
        --daemon "$MOUNT_PID" --post post_fio \
        -- "${FIO[@]}" --numjobs=4 --file_service_type=random --filename="$files"
      mount_stop
    fi
    measure "history: list, $days dumps" ours -- "$DD" --store "$store" list
    measure "history: verify, $days dumps" ours -- "$DD" --store "$store" verify
    prep ours bash -c 'rm -rf "$1" && cp -a "$2" "$1" && "$3" --store "$1" forget --keep-last "$4" >/dev/null' \
      _ "$gcs" "$store" "$DD" $((days / 2))
    measure "history: gc after forgetting the oldest $((days - days / 2)) of $days dumps" ours --store "$gcs" --sync \
      -- "$DD" --store "$gcs" gc
  done
  rm -rf "$store" "$gcs"
}

# ------------------------------------------------------------------------------------------ main

cleanup() {
  set +e
  mount_stop 2>/dev/null
  stop_sshd
  [[ -n $MEM_POLL_PID ]] && kill "$MEM_POLL_PID" 2>/dev/null
  if [[ -n $CG || -n $MEMCG ]]; then
    sleep 0.2
    [[ -n $MEMCG ]] && rmdir "$MEMCG" 2>/dev/null
    [[ -n $CG ]] && rmdir "$CG" 2>/dev/null
  fi
  ((WIRE)) && nft delete table inet "$NFT_TABLE" 2>/dev/null
  umount "$FS" 2>/dev/null && rm -f "$WORK/fs.img"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

machine_info() {
  local v=()
  if [[ -n $BIN ]]; then v+=("versions:=$("$BIN" --version 2>&1 | head -n 1) ($BIN)")
  else v+=("versions:=diskdump $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?')"); fi
  if command -v borg >/dev/null; then v+=("versions:=$(borg --version)"); fi
  if command -v restic >/dev/null; then v+=("versions:=$(restic version | cut -d' ' -f1,2)"); fi
  if [[ -x $PYDD ]]; then v+=("versions:=python diskdump $("$PYDD" -m pip show diskdump 2>/dev/null | awk '/^Version/{print $2}')"); fi
  v+=("versions:=$(fio --version 2>/dev/null)" "versions:=lz4 $(lz4 --version 2>&1 | grep -o 'v[0-9.]*' | head -n 1)"
    "versions:=$(openssl version | cut -d' ' -f1,2)")
  if [[ -f $IMG/info ]]; then while read -r line; do v+=("images:=$line"); done <"$IMG/info"; fi
  python3 "$HELPER" machine "$MACHINE_FILE" "date=$START_DATE" "machine:load average at start=$START_LOAD" \
    "machine:work dir=$WORK on $(findmnt -no FSTYPE,SOURCE -T "$WORK" | tr -s ' '); stores and outputs on a journaled ext4 (loop$( ((LOOP_DIO)) && echo ', direct I/O')) at $FS" \
    "settings:size=$SIZE" "settings:runs=$RUNS" "settings:fio seconds=$FIO_SECS" "settings:only=$ONLY" \
    "settings:tools=$TOOLS" "settings:caches=$(if ((COLD)); then echo 'cold rows drop the page cache first'; else echo 'all warm (--warm)'; fi)" \
    "settings:bytes on the wire=$(if ((WIRE)); then echo "nftables counters on lo for the sshd's port $SSH_PORT"; else echo 'not measured (no sshd or no nftables)'; fi)" \
    "settings:remote CPU=$(if [[ -n $CG ]]; then echo "cgroup v$CG_V of the sshd"; else echo 'not measured'; fi)" \
    "settings:remote memory=$(remote_mem_info)" "${v[@]}"
}

# The S3 store against the local store (examples/bench-s3.sh, on a local 3-node Garage); only with --only ...,s3.
phase_s3() {
  bash "$REPO/examples/bench-s3.sh" --images "$IMG" --runs "$RUNS" --workdir "$WORK" --bin "$DD" | tee "$RESULTS/s3.md" >&2
}

main() {
  START_DATE=$(date -u +%FT%TZ) START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
  say "results in $RESULTS"
  setup_tools
  if ((SCALE)); then
    IMG=$WORK; : "${DD:?our diskdump did not build: ${BROKEN[ours]:-}}"
    phase_scale
    if on "$SCALE_ONLY" history; then phase_history; fi
  else
    prepare_images
    cat "$IMG/info" >&2
    local p
    for p in limits import dump restore mount verify gc s3; do
      on "$ONLY" "$p" || continue
      say "== $p"
      "phase_$p"
      trim_fs
    done
  fi
  machine_info
  local args=()
  if [[ -n $MARKDOWN ]]; then args+=(--markdown "$MARKDOWN"); fi
  if [[ -n $JSON ]]; then args+=(--json "$JSON"); fi
  python3 "$HELPER" report "$RUNS_FILE" "$MACHINE_FILE" --markdown "$RESULTS/report.md" --json "$RESULTS/report.json" >/dev/null
  python3 "$HELPER" report "$RUNS_FILE" "$MACHINE_FILE" "${args[@]}"
}

main
