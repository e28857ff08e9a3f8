#!/usr/bin/env bash
# The cluster path, end to end, on this machine and without a cloud:
#
#   ray up (Ray's "local" node provider, head on 127.0.0.1 reached over SSH)
#   -> ray job submit --working-dir . -- python -m cot_ray.cli train ...   (no --address: the
#      job's driver must join the cluster through $RAY_ADDRESS, which `ray job submit` sets)
#   -> ray job logs shows its progress, and its workers ran on the cluster's node
#   -> the cluster says, through Ray, that an autoscaler manages it (placement.autoscaler_running)
#   -> a driver started by hand with --address HOST:PORT ships its cot_ray to the workers
#   -> ray job submit ... cot-ray tune tune_configs/smoke.yaml on the same cluster
#   -> ray down, and no Ray process of the cluster is left; the sshd's namespace ends and nothing
#      listens on its port.
#
# It installs what it needs (openssh-server, rsync, netcat from apt; Ray's `default` extra
# from pip), runs its own sshd on 127.0.0.1:$SSH_PORT with a throw-away key, in a PID
# namespace of its own so that the cluster's `ray stop` cannot touch any other Ray on the
# machine, and cleans up after itself on success and failure alike. Run it again at will.
#
#   scripts/local_cluster_check.sh            # prints one JSON line at the end; exit 0: passed
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
WORK=${COT_RAY_CLUSTER_DIR:-/tmp/cot-ray-local-cluster}
SSH_PORT=${COT_RAY_SSH_PORT:-2222}
GCS_PORT=6390          # below Ray's worker port range (10002-19999)
DASH_PORT=8275
PY=$(command -v python3)
BIN=$(dirname "$PY")
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}      # explicit: a leftover token file would flip it on
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0        # keep the loopback node IP as it is
export RAY_USAGE_STATS_ENABLED=0
export RAY_ADDRESS="http://127.0.0.1:$DASH_PORT"  # for the job commands of this script
start=$(date +%s)
say() { echo "[local-cluster] $*" >&2; }
# `ray up` writes these into the head's home (here: ours) and `ray down` leaves them: remove
# them afterwards unless they were there before.
leftovers=()
for f in ~/ray_bootstrap_config.yaml ~/ray_bootstrap_key.pem; do [ -e "$f" ] || leftovers+=("$f"); done

# The sshd runs as PID 1 of a PID namespace of its own (`unshare --fork`, whose PID is in
# sshd.pid): when it dies the kernel kills everything left in the namespace (the cluster's Ray
# processes included). unshare itself blocks SIGTERM while it waits, so it is not the one to
# signal: PID 1 gets SIGTERM, then SIGKILL after a grace period, then unshare SIGKILL.
namespace_init() { pgrep -P "$(cat "$WORK/sshd.pid" 2>/dev/null)" 2>/dev/null | head -1; }
stop_namespace() {
    [ -f "$WORK/sshd.pid" ] || return 0
    local outer init
    outer=$(cat "$WORK/sshd.pid")
    init=$(namespace_init)
    [ -z "$init" ] || kill -TERM "$init" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$outer" 2>/dev/null || break; sleep 0.1; done
    [ -z "$init" ] || kill -KILL "$init" 2>/dev/null
    kill -KILL "$outer" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$outer" 2>/dev/null || break; sleep 0.1; done
    rm -f "$WORK/sshd.pid"
}

cleanup() {
    set +e
    if [ -f "$WORK/cluster.yaml" ] && [ -f "$WORK/sshd.pid" ]; then
        timeout 120 ray down -y "$WORK/cluster.yaml" >"$WORK/down.log" 2>&1
    fi
    stop_namespace
    rm -f /etc/profile.d/cot-ray-local-cluster.sh
    rm -f /tmp/cluster-cot-ray-local-check.state /tmp/cluster-cot-ray-local-check.lock  # the local provider's
    [ ${#leftovers[@]} -eq 0 ] || rm -f "${leftovers[@]}"
}
trap cleanup EXIT

# ---------------------------------------------------------------- what it needs
need=()
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v rsync >/dev/null || need+=(rsync)
command -v nc >/dev/null || need+=(netcat-openbsd)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
"$PY" -c "import aiohttp, requests, ray.dashboard.modules.job.sdk" 2>/dev/null || {
    say "installing Ray's default extra (pip install -e '.[cluster]')"
    "$PY" -m pip install -q -e ".[cluster]"
}
"$PY" -c "import cot_ray" || "$PY" -m pip install -q -e .

# ---------------------------------------------------------------- sshd on 127.0.0.1, its own PID namespace
cleanup >/dev/null 2>&1  # leftovers of an earlier, interrupted run
trap cleanup EXIT
rm -rf "$WORK/runs" "$WORK/tune"  # the previous run's results: this one makes its own
mkdir -p "$WORK" /run/sshd
[ -f "$WORK/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -f "$WORK/id_ed25519"
[ -f "$WORK/host_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -f "$WORK/host_ed25519"
cp "$WORK/id_ed25519.pub" "$WORK/authorized_keys"
chmod 600 "$WORK/authorized_keys"
cat >"$WORK/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $WORK/host_ed25519
AuthorizedKeysFile $WORK/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
PidFile none
EOF
# A login shell over SSH resets PATH: the cluster's commands must find this Python's ray. (The
# head's start command sets it again, after ~/.bashrc, which may put pyenv's shims first: the
# jobs' `python` is the one of the raylet's PATH.)
echo "export PATH=\"$BIN:\$PATH\" RAY_AUTH_MODE=$RAY_AUTH_MODE RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0" \
    >/etc/profile.d/cot-ray-local-cluster.sh
# No inherited stdout/stderr: a caller capturing this script's output must not wait on the sshd.
unshare --pid --fork --kill-child --mount-proc "$(command -v sshd || echo /usr/sbin/sshd)" -D -f "$WORK/sshd_config" \
    </dev/null >"$WORK/sshd.log" 2>&1 &
echo $! >"$WORK/sshd.pid"
for _ in $(seq 50); do nc -z 127.0.0.1 "$SSH_PORT" 2>/dev/null && break; sleep 0.2; done

cat >"$WORK/cluster.yaml" <<EOF
# cot-ray's local check cluster (written by scripts/local_cluster_check.sh)
cluster_name: cot-ray-local-check
provider:
  type: local
  head_ip: 127.0.0.1
  worker_ips: []
auth:
  ssh_user: root
  ssh_private_key: $WORK/id_ed25519
  ssh_proxy_command: nc 127.0.0.1 $SSH_PORT
min_workers: 0
max_workers: 0
head_start_ray_commands:
  - ray stop
  - export PATH="$BIN:\$PATH" && RAY_AUTH_MODE=$RAY_AUTH_MODE ray start --head --port=$GCS_PORT --dashboard-host=127.0.0.1 --dashboard-port=$DASH_PORT --num-cpus=4 --autoscaling-config=~/ray_bootstrap_config.yaml
worker_start_ray_commands: []
EOF

# ---------------------------------------------------------------- the cluster
# Token mode needs a token on the head before it starts (Ray generates none for `ray start`):
# ~/.ray/auth_token, made here unless one exists, as docs/cluster.md tells users to before `ray up`.
[ "$RAY_AUTH_MODE" != token ] || ray get-auth-token --generate >/dev/null
say "ray up"
ray up -y "$WORK/cluster.yaml" >"$WORK/up.log" 2>&1 || { tail -30 "$WORK/up.log" >&2; exit 1; }
head_node=$("$PY" - <<EOF
import ray
ray.init(address="127.0.0.1:$GCS_PORT", logging_level="ERROR", log_to_driver=False)
print(",".join(n["NodeID"][:8] for n in ray.nodes() if n["Alive"]))
EOF
)
say "cluster up: node(s) $head_node"

job() {  # job NAME COMMAND...: submit, wait, keep its logs in $WORK/NAME.log
    local name=$1; shift
    say "job $name: $*"
    if ! ray job submit --working-dir "$REPO" --runtime-env-json '{"excludes": [".git", ".ci", "runs"]}' \
            -- "$@" >"$WORK/$name.submit.log" 2>&1; then
        tail -40 "$WORK/$name.submit.log" >&2
        return 1
    fi
    local id
    id=$(grep -o "raysubmit_[A-Za-z0-9]*" "$WORK/$name.submit.log" | head -1)
    ray job logs "$id" >"$WORK/$name.log" 2>&1
}

small=(--set eval.num_samples=512 --set eval.num_test=512 --set eval.num_train=256 --set run.log_every=10)
job train python -m cot_ray.cli train --iters 50 --logdir "$WORK/runs" --set run.name=train "${small[@]}"
grep -q "joining the Ray cluster at .* (\$RAY_ADDRESS)" "$WORK/train.log" \
    || { say "train did not join through \$RAY_ADDRESS"; tail -20 "$WORK/train.log" >&2; exit 1; }
grep -q "\[cot\] it 50/50" "$WORK/train.log" || { say "no progress in ray job logs"; exit 1; }
workers=$(grep -o "node [0-9a-f]\{8\}" "$WORK/train.log" | awk '{print $2}' | sort -u | paste -sd,)
[ -n "$workers" ] && [ "$workers" = "$head_node" ] \
    || { say "the workers ran on $workers, not on the cluster's node(s) $head_node"; exit 1; }
say "train: joined through \$RAY_ADDRESS, workers on $workers, 50 iterations"

# runtime.autoscaling "auto" asks the cluster itself (its node types) whether an autoscaler
# with a node configuration manages it: on this `ray up` cluster it must say so.
job autoscaler python -c "import ray; ray.init(); from cot_ray import placement; \
print('node types', sorted(ray.get(ray.remote(num_cpus=0)(placement.cluster_node_types).remote())), \
'autoscaler', placement.autoscaler_running())"
grep -q "autoscaler True" "$WORK/autoscaler.log" \
    || { say "the ray up cluster's autoscaler was not detected"; tail -20 "$WORK/autoscaler.log" >&2; exit 1; }
say "autoscaler: $(grep "^node types" "$WORK/autoscaler.log")"

# A driver started by hand with --address (not a `ray job submit`): it ships its own cot_ray to
# the workers (connection.code_runtime_env), so nodes without cot-ray installed can run it. It runs
# from outside the repository, and its workers must import the shipped copy, not the install.
driver() {  # driver NAME COMMAND...: run in a fresh directory, output in $WORK/NAME.log
    local name=$1; shift
    say "driver $name: $*"
    mkdir -p "$WORK/$name.cwd"
    (cd "$WORK/$name.cwd" && env -u RAY_ADDRESS "$@") >"$WORK/$name.log" 2>&1 \
        || { tail -30 "$WORK/$name.log" >&2; return 1; }
}
driver shipped "$PY" -c "import ray; from cot_ray import connection; from cot_ray.config import RuntimeConfig; \
connection.connect(RuntimeConfig(address='127.0.0.1:$GCS_PORT')); \
print('worker cot_ray', ray.get(ray.remote(num_cpus=0)(lambda: __import__('cot_ray').__file__).remote()))"
grep -q "^worker cot_ray .*runtime_resources/py_modules_files/" "$WORK/shipped.log" \
    || { say "the workers did not run the shipped cot_ray"; tail -20 "$WORK/shipped.log" >&2; exit 1; }
driver address "$PY" -m cot_ray.cli train --address "127.0.0.1:$GCS_PORT" --iters 20 --logdir "$WORK/runs" \
    --set run.name=address "${small[@]}"
grep -q "joining the Ray cluster at 127.0.0.1:$GCS_PORT" "$WORK/address.log" && grep -q "\[cot\] it 20/20" "$WORK/address.log" \
    || { say "train --address did not run on the cluster"; tail -20 "$WORK/address.log" >&2; exit 1; }
say "--address: the workers import the shipped package ($(grep -o "py_modules_files/[^/]*" "$WORK/shipped.log")); train ran 20 iterations"

job tune python -m cot_ray.cli tune tune_configs/smoke.yaml --storage "$WORK/tune" --name smoke \
    --set data.cache_dir="$WORK/cache"
summary=$(grep '^{"experiment"' "$WORK/tune.log" | tail -1)
echo "$summary" | "$PY" -c "import json, sys; s = json.load(sys.stdin); assert s['trials'] == 4 and not s['interrupted'] and s['best_config'], s" \
    || { say "the sweep did not finish"; tail -30 "$WORK/tune.log" >&2; exit 1; }
say "tune: 4 trials, best config $(echo "$summary" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["best_config"])')"

# ---------------------------------------------------------------- down, and nothing left
say "ray down"
timeout 120 ray down -y "$WORK/cluster.yaml" >"$WORK/down.log" 2>&1
ns=$(readlink "/proc/$(namespace_init)/ns/pid")  # the cluster's PID namespace
in_namespace() {  # in_namespace [PATTERN]: how many processes of the namespace (matching PATTERN) are left
    local n=0 p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$ns" ] || continue
        [ -z "${1:-}" ] || grep -qE "$1" "$p/cmdline" 2>/dev/null || continue
        n=$((n + 1))
    done
    echo "$n"
}
left=$(in_namespace "raylet|gcs_server|dashboard|ray::")
[ "$left" -eq 0 ] || { say "$left Ray process(es) left after ray down"; exit 1; }
rm -f "$WORK/cluster.yaml"  # nothing for cleanup to take down
stop_namespace
left=$(in_namespace)
[ "$left" -eq 0 ] || { say "$left process(es) of the cluster's namespace left after its end"; exit 1; }
! nc -z 127.0.0.1 "$SSH_PORT" 2>/dev/null || { say "something still listens on 127.0.0.1:$SSH_PORT"; exit 1; }
say "the namespace ended: no process of it left, nothing on 127.0.0.1:$SSH_PORT"
echo "{\"local_cluster_check\": \"passed\", \"node\": \"$head_node\", \"seconds\": $(( $(date +%s) - start ))}"
