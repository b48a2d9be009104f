# Sourced by examples/demo.sh and examples/bench-s3.sh: a throwaway sshd on
# 127.0.0.1 that plays the remote server, and an ssh config naming it.
#   start_throwaway_sshd DIR ALIAS
# makes DIR (keys, sshd_config, home/.ssh/{config,known_hosts}), starts sshd
# in the background (its pid in SSHD_PID), waits until it accepts
# connections, and exports DISKDUMP_SSH_CONFIG: OpenSSH reads ~/.ssh from
# the passwd entry's home, not $HOME, so both transports get this config
# (like `ssh -F`), which names its key and known_hosts itself.
start_throwaway_sshd() {
  local dir=$1 alias=$2 port
  rm -rf "$dir"; mkdir -p "$dir/home/.ssh" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/home/.ssh/id_ed25519"
  cp "$dir/home/.ssh/id_ed25519.pub" "$dir/authorized_keys"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$dir/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
PermitRootLogin prohibit-password
CFG
  /usr/sbin/sshd -D -e -f "$dir/sshd_config" 2>"$dir/sshd.log" &
  SSHD_PID=$!
  echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/host_key.pub")" >"$dir/home/.ssh/known_hosts"
  cat >"$dir/home/.ssh/config" <<CFG
Host $alias
  HostName 127.0.0.1
  Port $port
  User $(id -un)
  IdentityFile $dir/home/.ssh/id_ed25519
  UserKnownHostsFile $dir/home/.ssh/known_hosts
CFG
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  export DISKDUMP_SSH_CONFIG=$dir/home/.ssh/config
}
