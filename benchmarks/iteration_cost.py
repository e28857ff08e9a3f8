"""Cost of one CoT iteration relative to one MLE iteration, at the default sizes.

Both loops run in this process on the same data, interleaved in rounds so that machine noise
hits both alike; the figure is the ratio of medians. Prints one JSON line:
``{"mle_ms", "cot_ms", "ratio", "cot_breakdown_ms": {...}, "data", "device", "threads"}``.

On text (``--data coco``) most of a batch is padding after the sentences' ends, which the
losses skip, so a step costs less the earlier G's samples end. A generator at its
initialisation almost never ends a sentence (the worst case, which ``cot_ms`` measures); the
breakdown adds ``m_step_real_lengths`` and ``g_step_real_lengths``, the two updates on batches
of real sentences in place of G's samples: the cost once G ends sentences as the data does.

    python benchmarks/iteration_cost.py [--data oracle|coco] [--iters 30] [--rounds 5] [--device cpu] [--threads N]

Measured on the 2-core dev CPU, one thread, COCO (6,097 words, 36 positions, G 64/64, M
128/128), ``--data coco --threads 1 --iters 10 --rounds 3``, after padding was skipped: m_step
678 ms with G's initial samples, 349 ms with real sentence lengths; g_step 481 and 164 ms
(MLE 91 ms, CoT 1,368 ms with G's initial samples). Before, the two steps cost 1,000 and 510 ms
whatever the lengths.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cot_ray.config_loading import load_config
from cot_ray.data import load_dataset
from cot_ray.group import local_group
from cot_ray.memory import retain_freed_memory
from cot_ray.schedule import Schedule


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_iterations(algo: str, data, iters: int, device: str, source: str, warmup: int = 3):
    cfg = load_config(None, [f"cot.algo={algo}", f"run.device={device}", f"data.source={source}"])
    w = local_group(cfg, data)
    w.sync_mediator()
    schedule, t, m_updates = Schedule(0), 0, 0  # the sync iteration
    for _ in range(warmup):
        _, m_updates = schedule.iteration(w, cfg, t, m_updates)
        t += 1
    _sync(device)

    def run(n):
        nonlocal t, m_updates
        t0 = time.perf_counter()
        for _ in range(n):
            _, m_updates = schedule.iteration(w, cfg, t, m_updates)
            t += 1
        _sync(device)
        return (time.perf_counter() - t0) / n * 1e3

    return w, cfg, run


def cot_breakdown(w, cfg, device: str, reps: int = 10, real: torch.Tensor = None) -> dict:
    """Milliseconds of each part of one CoT iteration (sample, mediator step, sync, generator step);
    with ``real`` (text) also of the two updates on real sentences in place of G's samples."""
    B = cfg.cot.batch_size
    parts = {"sample": [], "m_step": [], "sync": [], "g_step": []}
    for _ in range(reps):
        t0 = time.perf_counter()
        fake = w.g.sample(2 * B)
        _sync(device)
        t1 = time.perf_counter()
        w.m.step(fake, 0, B)
        _sync(device)
        t2 = time.perf_counter()
        w.g.set_mediator_weights(w.m.get_weights())
        _sync(device)
        t3 = time.perf_counter()
        w.g.step_cot(fake, B, B)
        _sync(device)
        t4 = time.perf_counter()
        for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            dt_ms = dt * 1e3
            parts[k].append(dt_ms)
    if real is not None:
        parts["m_step_real_lengths"], parts["g_step_real_lengths"] = [], []
        for i in range(reps):
            fake = real[i * 2 * B:(i + 1) * 2 * B]
            t0 = time.perf_counter()
            w.m.step(fake, 0, B)
            _sync(device)
            t1 = time.perf_counter()
            w.g.step_cot(fake, B, B)
            _sync(device)
            t2 = time.perf_counter()
            parts["m_step_real_lengths"].append((t1 - t0) * 1e3)
            parts["g_step_real_lengths"].append((t2 - t1) * 1e3)
    return {k: round(statistics.median(v), 2) for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("oracle", "coco"), default="oracle", help="training data (and its default sizes)")
    ap.add_argument("--iters", type=int, default=30, help="iterations per timed block")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved MLE/CoT blocks")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()
    data = load_dataset(load_config(None, [f"data.source={args.data}"]).data)
    _, _, run_mle = time_iterations("mle", data, args.iters, args.device, args.data)
    w_cot, cfg_cot, run_cot = time_iterations("cot", data, args.iters, args.device, args.data)
    mle, cot = [], []
    for _ in range(args.rounds):
        mle.append(run_mle(args.iters))
        cot.append(run_cot(args.iters))
    mle_ms, cot_ms = statistics.median(mle), statistics.median(cot)
    print(json.dumps({
        "mle_ms": round(mle_ms, 2), "cot_ms": round(cot_ms, 2), "ratio": round(cot_ms / mle_ms, 2),
        "cot_breakdown_ms": cot_breakdown(w_cot, cfg_cot, args.device,
                                          real=data.train if data.eos_id is not None else None),
        "data": args.data,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
