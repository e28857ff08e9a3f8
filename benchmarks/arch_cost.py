"""Iteration cost of MLE and CoT with LSTM and Transformer G and M, at three model sizes, with the
floating-point work counted and the fraction of this machine's matrix-multiply peak it runs at.

Sizes are chosen by G's parameter count (M is twice as wide, of the same architecture): about
the LSTM default G's (333k, "1x"), 4x and 16x that, on the oracle (V 5,000, T 20, batch 64).

* LSTM: G widths 32, 120, 400 (embedding = hidden, one layer); the default recipe's G is the 1x.
* Transformer: G widths 56, 160, 384, two pre-LayerNorm blocks of 4 heads, tied output layer.

For each, one process and ``--threads`` torch threads (default 1) run the sync iteration in
process (no Ray), interleaving MLE and CoT blocks of ``--iters`` iterations over ``--rounds``
rounds (medians reported). The FLOPs of one iteration (forward and backward passes, sampling,
the output layers in the fused losses) are counted with ``torch.utils.flop_counter`` plus what
it cannot see on a CPU, counted analytically: the LSTM's recurrent matrix products (2 x 4H x
(E + H) per token and layer forward, twice that backward) and scaled dot-product attention
(4 x T_q x T_k x D per head forward, twice that backward). The peak is the best rate of a
1024 x 1024 float32 matrix product on the same threads, measured by this script; the fraction
is achieved FLOP/s over it. Prints one JSON line.

    python benchmarks/arch_cost.py [--iters 5] [--rounds 3] [--threads 1] [--scales 1,4,16]
                                   [--device cpu|cuda] [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import cot_ray.models.transformer as transformer_module
from cot_ray.config_loading import load_config
from cot_ray.data import load_dataset
from cot_ray.group import local_group
from cot_ray.machine import configure_process
from cot_ray.models import LSTMLM
from cot_ray.schedule import Schedule

WIDTHS = {"lstm": {1: 32, 4: 120, 16: 400}, "transformer": {1: 56, 4: 160, 16: 384}}


def sizes(arch: str, scale: int) -> list[str]:
    g = WIDTHS[arch][scale]
    out = []
    for name, w in (("generator", g), ("mediator", 2 * g)):
        out += [f"{name}.arch={arch}", f"{name}.hidden_dim={w}"]
        if arch == "lstm":
            out += [f"{name}.emb_dim={w}"]
        else:
            out += [f"{name}.num_layers=2", f"{name}.num_heads=4"]
    return out


class _Analytic:
    """FLOPs that torch's flop counter does not see on a CPU, added up while it runs."""

    def __init__(self):
        self.flops = 0

    def __enter__(self):
        self._hidden, self._sdpa = LSTMLM.hidden, transformer_module.F.scaled_dot_product_attention
        outer = self

        def hidden(model, tokens, dropout_generator=None):
            B, T = tokens.shape
            fwd, e = 0, model.cfg.emb_dim
            for _ in range(model.cfg.num_layers):
                fwd += 2 * B * T * 4 * model.cfg.hidden_dim * (e + model.cfg.hidden_dim)
                e = model.cfg.hidden_dim
            outer.flops += fwd * (3 if torch.is_grad_enabled() and model.training else 1)
            return outer._hidden(model, tokens, dropout_generator)

        def sdpa(q, k, v, *args, **kwargs):
            B, A, Tq, D = q.shape
            fwd = 4 * B * A * Tq * k.shape[2] * D
            outer.flops += fwd * (3 if torch.is_grad_enabled() and q.requires_grad else 1)
            return outer._sdpa(q, k, v, *args, **kwargs)

        LSTMLM.hidden = hidden
        transformer_module.F.scaled_dot_product_attention = sdpa
        return self

    def __exit__(self, *exc):
        LSTMLM.hidden = self._hidden
        transformer_module.F.scaled_dot_product_attention = self._sdpa
        return False


def matmul_peak(device: str, n: int = 1024, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n float32 matrix product on this device and thread count."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(arch: str, scale: int, data, args) -> dict:
    out = {"arch": arch, "scale": scale}
    runs = {}
    for algo in ("mle", "cot"):
        cfg = load_config(None, sizes(arch, scale) + [f"cot.algo={algo}", f"run.device={args.device}",
                                                      f"run.precision={args.precision}"])
        w = local_group(cfg, data)
        w.sync_mediator()
        schedule, state = Schedule(0), {"t": 0, "m": 0}

        def step(cfg=cfg, w=w, schedule=schedule, state=state):
            _, state["m"] = schedule.iteration(w, cfg, state["t"], state["m"])
            state["t"] += 1

        step()  # warm-up
        with FlopCounterMode(display=False) as counter, _Analytic() as extra:
            step()
        flops = counter.get_total_flops() + extra.flops
        runs[algo] = (step, flops)
        out[f"{algo}_params_g"] = sum(p.numel() for p in w.g.model.parameters())
        if algo == "cot":
            out["params_m"] = sum(p.numel() for p in w.m.model.parameters())
    times = {"mle": [], "cot": []}
    for _ in range(args.rounds):
        for algo, (step, _) in runs.items():
            _sync(args.device)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                step()
            _sync(args.device)
            times[algo].append((time.perf_counter() - t0) / args.iters)
    for algo, (_, flops) in runs.items():
        sec = statistics.median(times[algo])
        out[f"{algo}_ms"] = round(sec * 1e3, 1)
        out[f"{algo}_gflop"] = round(flops / 1e9, 3)
        out[f"{algo}_gflops"] = round(flops / sec / 1e9, 2)
        out[f"{algo}_peak_fraction"] = round(flops / sec / 1e9 / args.peak, 3)
    out["params_g"] = out.pop("mle_params_g")
    out.pop("cot_params_g")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=5, help="iterations per timed block")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved MLE/CoT blocks")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scales", default="1,4,16", help="G sizes, in multiples of the LSTM default's parameters")
    ap.add_argument("--archs", default="lstm,transformer")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    configure_process(args.threads)
    args.peak = matmul_peak(args.device)
    data = load_dataset(load_config(None, []).data)
    rows = [measure(arch, int(s), data, args) for s in args.scales.split(",") for arch in args.archs.split(",")]
    print(json.dumps({"benchmark": "arch_cost", "device": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                                                           else platform.processor() or platform.machine()),
                      "threads": torch.get_num_threads(), "precision": args.precision,
                      "matmul_peak_gflops": round(args.peak, 1), "rows": rows}))


if __name__ == "__main__":
    main()
