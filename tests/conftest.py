"""Shared fixtures: tiny configurations that exercise the real code paths in seconds."""

from __future__ import annotations

import glob
import os
import struct
from collections import defaultdict

import pytest
import torch

from cot_ray.config_loading import load_config

# Small models and data: the oracle keeps its 5,000-token vocabulary and length 20.
TINY = [
    "generator.emb_dim=8", "generator.hidden_dim=8",
    "mediator.emb_dim=16", "mediator.hidden_dim=16",
    "cot.batch_size=16",
    "data.num_train=256", "data.num_test=64", "data.num_valid=64",
    "eval.num_samples=64", "eval.num_test=64",
    "run.log_every=1", "run.progress_s=0", "run.threads=1",  # a progress line every iteration
    "runtime.gpus_per_worker=0",  # CPU tests stay on the CPU on a machine with GPUs (gpu_check.sh runs them all)
]

# For the Ray workers of the CPU tests: Ray leaves CUDA_VISIBLE_DEVICES alone, and it hides every
# GPU, so a (fake or real) GPU that a test's Ray hands out is never one that torch can use.
CPU_ONLY_WORKERS = {"env_vars": {"CUDA_VISIBLE_DEVICES": "", "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}


def cpu_only_env() -> dict:
    """The environment for a cot-ray process of a CPU test: it sees no GPU (nor does its local
    Ray), and joins no cluster by accident."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
    """One oracle data cache for the whole session, outside the user's home."""
    return str(tmp_path_factory.mktemp("data-cache"))


@pytest.fixture
def tiny(tmp_path, data_cache):
    """``tiny(*overrides)`` -> a validated tiny Config whose runs go under tmp_path."""

    def make(*overrides: str):
        return load_config(None, TINY + [f"data.cache_dir={data_cache}", f"run.logdir={tmp_path / 'runs'}",
                                         *overrides])

    return make


def assert_same_tree(a, b, path="state"):
    """Bitwise equality of nested states (tensors, dicts, lists, numbers), naming the first difference."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def event_scalars(run_dir: str) -> dict:
    """tag -> [(step, value)] from the run's tensorboardX event files (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    out = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])  # record: length, crc, payload, crc
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out[v.tag].append((event.step, v.simple_value))
    return dict(out)


@pytest.fixture
def one_thread():
    """Run a test of tiny tensors on one intra-op thread; restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
