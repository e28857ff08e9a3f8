#!/usr/bin/env bash
# The GPU path, on a machine with one or more NVIDIA GPUs (nothing here runs on a CPU-only one):
#
#   1. the whole test suite: the GPU-marked tests (learners built on a GPU hand out CPU
#      tensors) and every CPU test, which must pass on a GPU machine too (they pin themselves
#      to the CPU: tests/conftest.py, TINY and CPU_ONLY_WORKERS);
#   2. a local Ray holding every GPU, and a training run whose G and M take one GPU each (both
#      share the one GPU when there is only one), driven by a process that sees NO GPU
#      (CUDA_VISIBLE_DEVICES= for the driver only, as on a cluster whose head has none): its
#      checkpoints cross from the GPU workers to it, then it resumes the run and finishes it;
#   3. benchmarks/iteration_cost.py --device cuda, benchmarks/runtime_overhead.py and
#      benchmarks/arch_cost.py (LSTM and Transformer, float32 and bf16 autocast) on the GPUs.
#
# Prints one JSON line; exit 0: every check passed. About 15 minutes on one GPU (the suite is most of it).
#   scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
W=${COT_RAY_GPU_DIR:-/tmp/cot-ray-gpu-check}
GCS_PORT=6391
rm -rf "$W" && mkdir -p "$W"
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
say() { echo "[gpu-check] $*" >&2; }
start=$(date +%s)

NGPU=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
[ "$NGPU" -ge 1 ] || { say "no CUDA GPU is visible to torch: nothing to check"; exit 1; }
GPW=$([ "$NGPU" -ge 2 ] && echo 1 || echo 0.5)  # G and M on a GPU each when there are two
GPU_NAME=$(python -c "import torch; print(torch.cuda.get_device_name(0))")
say "$NGPU GPU(s) ($GPU_NAME); each worker takes $GPW GPU"

say "1. the test suite, GPU-marked tests included"
python -m pytest -q tests >"$W/pytest.log" 2>&1 || { tail -30 "$W/pytest.log" >&2; exit 1; }
python -m pytest -q -m gpu tests >"$W/pytest_gpu.log" 2>&1 || { tail -30 "$W/pytest_gpu.log" >&2; exit 1; }
grep -q "skipped" "$W/pytest_gpu.log" && { say "GPU-marked tests were skipped on a GPU machine"; exit 1; }
gpu_tests="$(grep -oE "[0-9]+ passed" "$W/pytest.log" | head -1) (GPU-marked: $(grep -oE "[0-9]+ passed" "$W/pytest_gpu.log" | head -1))"

say "2. training on the GPUs, driven by a process without one"
ray start --head --port=$GCS_PORT --num-gpus="$NGPU" --include-dashboard=false >"$W/ray.log" 2>&1
trap 'ray stop >/dev/null 2>&1 || true' EXIT
common=(--gpus-per-worker "$GPW" --json --set eval.every=100 --set eval.num_samples=2048 --set eval.num_test=2048)
CUDA_VISIBLE_DEVICES= RAY_ADDRESS=127.0.0.1:$GCS_PORT python -m cot_ray.cli train --iters 200 --logdir "$W/runs" \
    --set run.name=gpu "${common[@]}" >"$W/train.json" 2>"$W/train.log" || { tail -30 "$W/train.log" >&2; exit 1; }
grep -q "generator on cuda:0" "$W/train.log" && grep -q "mediator on cuda:0" "$W/train.log" \
    || { say "the workers did not run on GPUs"; grep workers "$W/train.log" >&2; exit 1; }
grep -q "evaluation in the generator's process" "$W/train.log" || { say "evaluation did not run on the GPU"; exit 1; }
if [ "$NGPU" -ge 2 ]; then  # two different GPUs
    [ "$(grep -oE "GPU [0-9]+" "$W/train.log" | sort -u | wc -l)" -ge 2 ] || { say "G and M shared a GPU"; exit 1; }
fi
CUDA_VISIBLE_DEVICES= RAY_ADDRESS=127.0.0.1:$GCS_PORT python -m cot_ray.cli train --resume "$W/runs/gpu" --iters 300 \
    --gpus-per-worker "$GPW" --json >"$W/resume.json" 2>"$W/resume.log" || { tail -30 "$W/resume.log" >&2; exit 1; }
python - "$W" <<'EOF'
import json, sys
w = sys.argv[1]
first, resumed = (json.load(open(f"{w}/{n}.json")) for n in ("train", "resume"))
assert first["iteration"] == 200 and resumed["iteration"] == 300, (first, resumed)
EOF

say "2b. README's GPU commands (its AWS section), with --smoke, on this machine's Ray"
if [ "$NGPU" -ge 2 ]; then  # as written: one GPU per worker
    RAY_ADDRESS=127.0.0.1:$GCS_PORT python -m cot_ray.cli train --gpus-per-worker 1 --minutes 60 --smoke \
        --logdir "$W/readme" >"$W/readme_train.log" 2>&1 || { tail -30 "$W/readme_train.log" >&2; exit 1; }
    RAY_ADDRESS=127.0.0.1:$GCS_PORT python -m cot_ray.cli tune tune_configs/ratios_dropout.yaml --set runtime.gpus_per_worker=1 --smoke \
        --storage "$W/readme_tune" >"$W/readme_tune.log" 2>&1 || { tail -30 "$W/readme_tune.log" >&2; exit 1; }
    readme_gpu="as written"
else  # one GPU: two workers of one GPU each cannot be placed, so they share it
    RAY_ADDRESS=127.0.0.1:$GCS_PORT python -m cot_ray.cli train --gpus-per-worker 0.5 --minutes 60 --smoke \
        --logdir "$W/readme" >"$W/readme_train.log" 2>&1 || { tail -30 "$W/readme_train.log" >&2; exit 1; }
    RAY_ADDRESS=127.0.0.1:$GCS_PORT python -m cot_ray.cli tune tune_configs/ratios_dropout.yaml \
        --set runtime.gpus_per_worker=0.5 --smoke --storage "$W/readme_tune" >"$W/readme_tune.log" 2>&1 \
        || { tail -30 "$W/readme_tune.log" >&2; exit 1; }
    readme_gpu="with 0.5 GPU per worker (one GPU)"
fi
ray stop >/dev/null 2>&1

say "3. benchmarks on the GPU"
python benchmarks/iteration_cost.py --device cuda >"$W/iteration_cost.json" 2>"$W/iteration_cost.log"
python benchmarks/runtime_overhead.py --device cuda --gpus-per-worker "$GPW" --iters 200 \
    >"$W/runtime_overhead.json" 2>"$W/runtime_overhead.log"
for p in fp32 bf16; do  # the Transformer and the LSTM at three sizes, float32 and bf16 autocast
    python benchmarks/arch_cost.py --device cuda --precision "$p" --iters 10 >"$W/arch_cost_$p.json" \
        2>"$W/arch_cost_$p.log" || { tail -30 "$W/arch_cost_$p.log" >&2; exit 1; }
done

python - "$W" "$NGPU" "$GPU_NAME" "$gpu_tests" "$(( $(date +%s) - start ))" "$readme_gpu" <<'EOF'
import json, sys
w, ngpu, name, tests, seconds, readme = sys.argv[1:]
last = lambda n: json.loads(open(f"{w}/{n}.json").read().strip().splitlines()[-1])  # noqa: E731
print(json.dumps({"gpu_check": "passed", "gpus": int(ngpu), "gpu": name, "gpu_tests": tests, "readme_gpu": readme,
                  "train": {k: last("resume")[k] for k in ("iteration", "metrics")},
                  "iteration_cost": last("iteration_cost"), "runtime_overhead": last("runtime_overhead"),
                  "arch_cost_fp32": last("arch_cost_fp32"), "arch_cost_bf16": last("arch_cost_bf16"),
                  "seconds": int(seconds)}))
EOF
