#!/usr/bin/env bash
# The GPU path, on a machine with one or more NVIDIA GPUs (nothing here runs on a CPU-only one):
#
#   0. what it needs: a CUDA build of torch that this machine's driver can run (checked: it
#      says what is missing and the command that installs it), the test extra (installed);
#   1. the whole test suite: the GPU-marked tests (learners built on a GPU hand out CPU
#      tensors, evaluation on a GPU learner computes on the GPU) and every CPU test, which must
#      pass on a GPU machine too (they pin themselves to the CPU: tests/conftest.py, TINY and
#      CPU_ONLY_WORKERS);
#   2. a Ray of its own (`ray start --block` in the background, stopped by its own SIGTERM: no
#      `ray stop`, which would stop every Ray on the machine) holding every GPU, and a training
#      run whose G and M take one GPU each (both share the one GPU when there is only one),
#      driven by a process that sees NO GPU (CUDA_VISIBLE_DEVICES= for the driver only, as on a
#      cluster whose head has none): its checkpoints cross from the GPU workers to it, then it
#      resumes the run and finishes it; evaluation ran in the generator's process, on its GPU;
#   2a. determinism: two runs with the same seed on the same GPU(s) must end with the same
#      numbers: bitwise, or (GPU kernels that add in varying order) within 0.05 nats, reported;
#   2b. the GPU commands of docs/cluster.md (its AWS section) with --smoke;
#   3. benchmarks/iteration_cost.py --device cuda, benchmarks/runtime_overhead.py and
#      benchmarks/arch_cost.py (LSTM and Transformer, float32 and bf16 autocast) on the GPUs.
#
# Every failing step says which and why. Prints one JSON line; exit 0: every check passed.
# About 15 minutes on one GPU (the suite is most of it). COT_RAY_GPU_TESTS=gpu runs only the
# GPU-marked tests in step 1 (the CPU suite is CI's; for a lease too short for both), and the
# JSON says which ran.
#   scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
W=${COT_RAY_GPU_DIR:-/tmp/cot-ray-gpu-check}
GCS_PORT=${COT_RAY_GPU_PORT:-6391}
PY=${PYTHON:-python}
rm -rf "$W" && mkdir -p "$W"
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
say() { echo "[gpu-check] $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
trap 'rc=$?; say "FAILED (exit $rc) at line $LINENO: $BASH_COMMAND"' ERR
last_json() { tail -n 1 "$1"; }  # a command's JSON is its last line only
start=$(date +%s)

say "0. what the check needs"
"$PY" -c "import torch" 2>/dev/null || fail "torch is not installed for $PY: pip install -e '.[test]' after a CUDA build of torch"
read -r TORCH TORCH_CUDA CUDA_OK NGPU < <("$PY" -c "import torch; print(torch.__version__, torch.version.cuda, \
int(torch.cuda.is_available()), torch.cuda.device_count() if torch.cuda.is_available() else 0)")
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
[ -n "$DRIVER" ] || DRIVER=$(sed -n 's/.*Kernel Module *\([0-9.]*\).*/\1/p' /proc/driver/nvidia/version 2>/dev/null || true)
[ -n "$DRIVER" ] || fail "no NVIDIA driver found (nvidia-smi, /proc/driver/nvidia/version): this check needs a GPU machine"
if [ "$TORCH_CUDA" = "None" ]; then
    fail "torch $TORCH is a CPU build; NVIDIA driver $DRIVER: install a CUDA build it can run, e.g. \
pip install --force-reinstall 'torch==${TORCH%%+*}' --index-url https://download.pytorch.org/whl/cu130 (CUDA 13.0 needs driver >= 580; cu126 for older drivers)"
fi
[ "$CUDA_OK" = 1 ] && [ "$NGPU" -ge 1 ] || fail "torch $TORCH (CUDA $TORCH_CUDA) cannot use a GPU with NVIDIA \
driver $DRIVER: the driver is too old for this wheel's CUDA (update it, or install the torch wheel of an older CUDA)"
"$PY" -c "import pytest" 2>/dev/null || { say "installing the test extra"; "$PY" -m pip install -q -e ".[test]"; }
"$PY" -c "import ray" 2>/dev/null || fail "ray is not installed: pip install -e '.[test]'"
GPW=$([ "$NGPU" -ge 2 ] && echo 1 || echo 0.5)  # G and M on a GPU each when there are two
GPU_NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
say "$NGPU GPU(s) ($GPU_NAME), driver $DRIVER, torch $TORCH (CUDA $TORCH_CUDA); each worker takes $GPW GPU"

say "1. the test suite, GPU-marked tests included"
case "${COT_RAY_GPU_TESTS:-all}" in
    all) "$PY" -m pytest -q tests >"$W/pytest.log" 2>&1 || { tail -30 "$W/pytest.log" >&2; fail "the test suite (log: $W/pytest.log)"; } ;;
    gpu) echo "the CPU suite not run here (COT_RAY_GPU_TESTS=gpu): 0 passed" >"$W/pytest.log" ;;
    *) fail "COT_RAY_GPU_TESTS=${COT_RAY_GPU_TESTS}: give all (the whole suite, the default) or gpu (only the GPU-marked tests)" ;;
esac
"$PY" -m pytest -q -m gpu tests >"$W/pytest_gpu.log" 2>&1 || { tail -30 "$W/pytest_gpu.log" >&2; fail "the GPU-marked tests"; }
! grep -q "skipped" "$W/pytest_gpu.log" || fail "GPU-marked tests were skipped on a GPU machine"
gpu_tests="$(grep -oE "[0-9]+ passed" "$W/pytest.log" | head -1) (GPU-marked: $(grep -oE "[0-9]+ passed" "$W/pytest_gpu.log" | head -1))"

say "2. training on the GPUs, driven by a process without one (a Ray of its own on port $GCS_PORT)"
ray start --head --port="$GCS_PORT" --num-gpus="$NGPU" --include-dashboard=false --temp-dir="$W/ray" --block \
    </dev/null >"$W/ray.log" 2>&1 &
RAY_PID=$!
stop_ray() {  # SIGTERM to `ray start --block`: it stops the processes it started, and only those
    kill -TERM "$RAY_PID" 2>/dev/null || return 0
    for _ in $(seq 60); do kill -0 "$RAY_PID" 2>/dev/null || return 0; sleep 0.5; done
    kill -KILL "$RAY_PID" 2>/dev/null || true
}
trap stop_ray EXIT
for _ in $(seq 120); do
    RAY_ADDRESS=127.0.0.1:$GCS_PORT "$PY" -c "import ray; ray.init(logging_level='ERROR'); ray.shutdown()" 2>/dev/null && break
    kill -0 "$RAY_PID" 2>/dev/null || { tail -20 "$W/ray.log" >&2; fail "ray start"; }
    sleep 1
done
export RAY_ADDRESS=127.0.0.1:$GCS_PORT
common=(--gpus-per-worker "$GPW" --json --set eval.every=100 --set eval.num_samples=2048 --set eval.num_test=2048)
CUDA_VISIBLE_DEVICES= "$PY" -m cot_ray.cli train --iters 200 --logdir "$W/runs" --set run.name=gpu "${common[@]}" \
    >"$W/train.json" 2>"$W/train.log" || { tail -30 "$W/train.log" >&2; fail "training on the GPUs"; }
grep -q "generator on cuda:0" "$W/train.log" && grep -q "mediator on cuda:0" "$W/train.log" \
    || { grep workers "$W/train.log" >&2; fail "the workers did not run on GPUs"; }
grep -q "evaluation in the generator's process" "$W/train.log" || fail "evaluation did not run in the generator's process (its GPU)"
if [ "$NGPU" -ge 2 ]; then  # two different GPUs
    [ "$(grep -oE "GPU [0-9]+" "$W/train.log" | sort -u | wc -l)" -ge 2 ] || fail "G and M shared a GPU"
fi
CUDA_VISIBLE_DEVICES= "$PY" -m cot_ray.cli train --resume "$W/runs/gpu" --iters 300 --gpus-per-worker "$GPW" --json \
    >"$W/resume.json" 2>"$W/resume.log" || { tail -30 "$W/resume.log" >&2; fail "resuming the GPU run from a driver without a GPU"; }
"$PY" - "$(last_json "$W/train.json")" "$(last_json "$W/resume.json")" <<'EOF' || fail "the run and its resumption stopped at the wrong iteration"
import json, sys
first, resumed = (json.loads(a) for a in sys.argv[1:])
assert first["iteration"] == 200 and resumed["iteration"] == 300, (first["iteration"], resumed["iteration"])
EOF

say "2a. two runs with the same seed on the same GPU(s)"
for r in a b; do
    "$PY" -m cot_ray.cli train --iters 50 --seed 3 --logdir "$W/determinism" --set "run.name=$r" "${common[@]}" \
        >"$W/determinism_$r.json" 2>"$W/determinism_$r.log" || { tail -30 "$W/determinism_$r.log" >&2; fail "determinism run $r"; }
done
determinism=$("$PY" - "$(last_json "$W/determinism_a.json")" "$(last_json "$W/determinism_b.json")" <<'EOF'
import json, sys
a, b = (json.loads(x)["metrics"] for x in sys.argv[1:])
diff = max(abs(a[k] - b[k]) for k in a if isinstance(a[k], (int, float)) and k in b)
if diff == 0:
    print("bitwise")
elif diff <= 0.05:
    print(f"within {diff:.2g}")
else:
    sys.exit(f"the same seed gave metrics {diff:.3g} apart: {a} vs {b}")
EOF
) || fail "two runs with the same seed on the same GPU disagree"
say "determinism: $determinism"

say "2b. the GPU commands of docs/cluster.md (its AWS section), with --smoke, on this check's Ray"
if [ "$NGPU" -ge 2 ]; then  # as written: one GPU per worker
    "$PY" -m cot_ray.cli train --gpus-per-worker 1 --minutes 60 --smoke --logdir "$W/readme" \
        >"$W/readme_train.log" 2>&1 || { tail -30 "$W/readme_train.log" >&2; fail "docs/cluster.md's GPU train command"; }
    "$PY" -m cot_ray.cli tune tune_configs/ratios_dropout.yaml --set runtime.gpus_per_worker=1 --smoke \
        --storage "$W/readme_tune" >"$W/readme_tune.log" 2>&1 || { tail -30 "$W/readme_tune.log" >&2; fail "docs/cluster.md's GPU sweep"; }
    readme_gpu="as written"
else  # one GPU: two workers of one GPU each cannot be placed, so they share it
    "$PY" -m cot_ray.cli train --gpus-per-worker 0.5 --minutes 60 --smoke --logdir "$W/readme" \
        >"$W/readme_train.log" 2>&1 || { tail -30 "$W/readme_train.log" >&2; fail "docs/cluster.md's GPU train command (0.5 GPU each)"; }
    "$PY" -m cot_ray.cli tune tune_configs/ratios_dropout.yaml --set runtime.gpus_per_worker=0.5 --smoke \
        --storage "$W/readme_tune" >"$W/readme_tune.log" 2>&1 || { tail -30 "$W/readme_tune.log" >&2; fail "docs/cluster.md's GPU sweep (0.5 GPU each)"; }
    readme_gpu="with 0.5 GPU per worker (one GPU)"
fi
unset RAY_ADDRESS
stop_ray

say "3. benchmarks on the GPU"
"$PY" benchmarks/iteration_cost.py --device cuda >"$W/iteration_cost.json" 2>"$W/iteration_cost.log" \
    || { tail -30 "$W/iteration_cost.log" >&2; fail "benchmarks/iteration_cost.py"; }
"$PY" benchmarks/runtime_overhead.py --device cuda --gpus-per-worker "$GPW" --iters 200 \
    >"$W/runtime_overhead.json" 2>"$W/runtime_overhead.log" || { tail -30 "$W/runtime_overhead.log" >&2; fail "benchmarks/runtime_overhead.py"; }
for p in fp32 bf16; do  # the Transformer and the LSTM at three sizes, float32 and bf16 autocast
    "$PY" benchmarks/arch_cost.py --device cuda --precision "$p" --iters 10 >"$W/arch_cost_$p.json" \
        2>"$W/arch_cost_$p.log" || { tail -30 "$W/arch_cost_$p.log" >&2; fail "benchmarks/arch_cost.py --precision $p"; }
done

"$PY" - "$W" "$NGPU" "$GPU_NAME" "$gpu_tests" "$(( $(date +%s) - start ))" "$readme_gpu" "$DRIVER" "$determinism" <<'EOF'
import json, sys
w, ngpu, name, tests, seconds, readme, driver, determinism = sys.argv[1:]
last = lambda n: json.loads(open(f"{w}/{n}.json").read().strip().splitlines()[-1])  # noqa: E731
print(json.dumps({"gpu_check": "passed", "gpus": int(ngpu), "gpu": name, "driver": driver, "gpu_tests": tests,
                  "determinism": determinism, "readme_gpu": readme,
                  "train": {k: last("resume")[k] for k in ("iteration", "metrics")},
                  "iteration_cost": last("iteration_cost"), "runtime_overhead": last("runtime_overhead"),
                  "arch_cost_fp32": last("arch_cost_fp32"), "arch_cost_bf16": last("arch_cost_bf16"),
                  "seconds": int(seconds)}))
EOF
