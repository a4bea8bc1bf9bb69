#!/usr/bin/env bash
# SSH fan-out benchmark: `echo ok` on N targets (default 100) with concurrency C (default 50),
# first contact and a second command, by dr-orchestrator's SSH pool, parallel-ssh (pssh) and a
# plain OpenSSH loop, all against one loopback sshd answering on 127.0.0.1..127.0.0.N.
# Needs root (a test user and /run/sshd) and Debian's openssh-server and pssh.
# Usage: scripts/bench-ssh.sh [N] [C]    (PROFILE=dev for a quick unoptimised run)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
C=${2:-50}
PROFILE=${PROFILE:-release}
USER_NAME=drobench
for bin in /usr/sbin/sshd parallel-ssh ssh-keygen; do
    command -v "$bin" >/dev/null || { echo "missing $bin (apt-get install -y openssh-server pssh)" >&2; exit 1; }
done
id -u "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/sh "$USER_NAME"
echo "$USER_NAME:bench-$(date +%s%N)" | chpasswd
mkdir -p /run/sshd
WORK=$(mktemp -d /tmp/dro-bench-ssh.XXXXXX)
chmod 755 "$WORK"   # sshd reads the authorized keys as the user
trap 'kill $(cat "$WORK/sshd.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host" -C bench
ssh-keygen -q -t ed25519 -N '' -f "$WORK/user" -C bench
mkdir -p "$WORK/keys" && cp "$WORK/user.pub" "$WORK/keys/$USER_NAME"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/sshd_config" <<CONF
ListenAddress 0.0.0.0:$PORT
HostKey $WORK/host
PidFile $WORK/sshd.pid
AuthorizedKeysFile $WORK/keys/%u
StrictModes no
UsePAM no
PasswordAuthentication no
AllowUsers $USER_NAME
MaxStartups 500
MaxSessions 64
LogLevel ERROR
CONF
/usr/sbin/sshd -f "$WORK/sshd_config"
for _ in $(seq 100); do [ -s "$WORK/sshd.pid" ] && break; sleep 0.05; done
FP=$(ssh-keygen -lf "$WORK/host.pub" | awk '{print $2}')
: > "$WORK/targets"; : > "$WORK/hosts"; : > "$WORK/known_hosts"
for i in $(seq "$N"); do
    echo "127.0.0.$i $PORT" >> "$WORK/targets"
    echo "127.0.0.$i" >> "$WORK/hosts"
    echo "[127.0.0.$i]:$PORT $(cat "$WORK/host.pub")" >> "$WORK/known_hosts"
done
SSH_OPTS=(-o BatchMode=yes -o UserKnownHostsFile="$WORK/known_hosts" -o StrictHostKeyChecking=yes
          -o IdentitiesOnly=yes -i "$WORK/user" -p "$PORT" -l "$USER_NAME")
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.3f}')"; }

cargo build -q --profile "$PROFILE" --bench ssh_fanout
BIN=$(ls -t target/"$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"/deps/ssh_fanout-* | grep -v '\.d$' | head -1)

echo "== $N targets, concurrency $C, $(nproc) cores, $(date -u +%F)"
TARGETS="$WORK/targets" SSH_USER=$USER_NAME SSH_KEY="$WORK/user" HOST_FP=$FP CONCURRENCY=$C "$BIN"
for round in first_contact second_command; do
    t=$(now)
    parallel-ssh -h "$WORK/hosts" -p "$C" -t 120 -x "-o BatchMode=yes -o UserKnownHostsFile=$WORK/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -i $WORK/user -p $PORT" -l "$USER_NAME" 'echo ok' > "$WORK/pssh.out"
    echo "pssh ${round}_s=$(since "$t") ok=$(grep -c SUCCESS "$WORK/pssh.out")/$N"
done
for round in first_contact second_command; do
    t=$(now); ok=0
    while read -r host; do
        [ "$(ssh "${SSH_OPTS[@]}" "$host" 'echo ok' </dev/null)" = ok ] && ok=$((ok + 1))
    done < "$WORK/hosts"
    echo "openssh-loop ${round}_s=$(since "$t") ok=$ok/$N"
done
