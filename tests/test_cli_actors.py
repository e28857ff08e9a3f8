"""The command line in actor mode, as a user runs it: ``cot-ray train`` as its own process, on
its own local Ray, with workers killed from outside and Ctrl-C sent as a terminal sends it (to
the whole process group). Every run is compared bitwise with the same command and ``--local``.

Nested CoT by default keeps the inner mediators in the mediator's worker: depth 2 with the sync
schedule and depth 1 with the async one, each surviving a SIGKILL of the mediator's process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
from click.testing import CliRunner

from cot_ray.checkpoint import CHECKPOINT, load_checkpoint
from cot_ray.cli import main
from tests.conftest import TINY, assert_same_tree, cpu_only_env

INNER = ["inner_mediator.emb_dim=8", "inner_mediator.hidden_dim=8"]


def _sets(data_cache: str, extra: list[str]) -> list[str]:
    return [a for kv in TINY + [f"data.cache_dir={data_cache}"] + extra for a in ("--set", kv)]


def _descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (Ray's raylet and workers of a local Ray started by it)."""
    children: dict = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _worker_pid(driver: int, cls: str) -> int:
    """The process of the Ray actor of class ``cls`` under ``driver`` (its title is ``ray::CLS``)."""
    for pid in _descendants(driver):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if title.startswith(f"ray::{cls}"):
            return pid
    raise AssertionError(f"no ray::{cls} process under {driver}")


class Cli:
    """``cot-ray ARGS`` as a separate process in its own session (as from a terminal); ``on``
    maps a text of its stderr to what to do the first time a line shows it."""

    def __init__(self, args: list[str], cwd: Path, cpus: Optional[set] = None):
        exe = shutil.which("cot-ray", path=os.path.dirname(sys.executable))
        assert exe, "the cot-ray entry point is not installed: pip install -e ."
        env = cpu_only_env()
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None  # taskset: a smaller machine
        self.proc = subprocess.Popen([exe, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True, preexec_fn=pin)
        self.lines: list[str] = []

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group

    def kill_worker(self, cls: str) -> None:
        os.kill(_worker_pid(self.proc.pid, cls), signal.SIGKILL)

    def wait(self, on: Optional[dict[str, Callable[[], None]]] = None, timeout: float = 300) -> tuple[int, str]:
        on = dict(on or {})
        deadline = time.monotonic() + timeout
        for line in self.proc.stderr:
            self.lines.append(line)
            for text in list(on):
                if text in line:
                    on.pop(text)()
            assert time.monotonic() < deadline, "".join(self.lines[-30:])
        out = self.proc.stdout.read()
        return self.proc.wait(timeout=60), "".join(self.lines) + out


def _local(tmp_path, args: list[str]) -> dict:
    res = CliRunner().invoke(main, ["train", "--local", "--json", "--logdir", str(tmp_path / "local"), *args],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


def _state(run_dir: str) -> dict:
    s = load_checkpoint(os.path.join(run_dir, CHECKPOINT))
    return {k: s[k] for k in ("g", "m", "iteration", "m_updates", "last_eval")}


def test_nested_depth_2_in_actor_mode_survives_a_killed_mediator_and_ctrl_c_during_the_recovery(tmp_path,
                                                                                                 data_cache):
    """`cot-ray train --nested --nest-depth 2`: the mediator's process (with both inner levels in
    it) is SIGKILLed at iteration 3; a Ctrl-C while the run recovers stops it once the learners
    are back, with a checkpoint and exit 130; `--resume` finishes it, bitwise as `--local`."""
    args = ["--nested", "--nest-depth", "2", "--iters", "6", *_sets(data_cache, INNER + [
        "run.checkpoint_every=2", "eval.every=3", "nested.m_steps=2"])]
    ref = _local(tmp_path, args)
    cli = Cli(["train", "--logdir", str(tmp_path / "actors"), *args], tmp_path)
    code, out = cli.wait({"it 3/": lambda: cli.kill_worker("MediatorLearner"), "worker failure": cli.ctrl_c})
    assert code == 130, out[-3000:]
    assert "mediator on cpu (1 thread(s)" in out and "with 2 inner mediator(s) in its process" in out
    assert "worker failure" in out and "restoring both learners from iteration 2" in out
    stopped = re.search(r"interrupted: checkpoint at iteration (\d+) written; continue with: "
                        r"cot-ray train --resume (\S+)", out)
    assert stopped, out[-3000:]
    assert int(stopped.group(1)) in (2, 3)  # 2: the Ctrl-C came during the recovery (as it nearly always does)
    resumed = Cli(["train", "--resume", stopped.group(2), "--iters", "6", "--json"], tmp_path)
    code, out = resumed.wait()
    assert code == 0, out[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["iteration"] == 6 and summary["metrics"] == ref["metrics"]
    assert_same_tree(_state(ref["run_dir"]), _state(summary["run_dir"]))
    assert "inner" in _state(summary["run_dir"])["m"]["inner"]  # both inner levels are checkpointed


def test_nested_async_in_actor_mode_survives_a_killed_mediator(tmp_path, data_cache):
    args = ["--nested", "--schedule", "async", "--staleness", "1", "--iters", "5", "--json",
            *_sets(data_cache, INNER + ["run.checkpoint_every=2", "eval.every=5"])]
    ref = _local(tmp_path, args)
    cli = Cli(["train", "--logdir", str(tmp_path / "actors"), *args], tmp_path)
    code, out = cli.wait({"it 3/": lambda: cli.kill_worker("MediatorLearner")})
    assert code == 0, out[-3000:]
    assert "restoring both learners from iteration 2" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["metrics"] == ref["metrics"]
    assert_same_tree(_state(ref["run_dir"]), _state(summary["run_dir"]))


@pytest.mark.parametrize("mode", ["--actors", "--local"])
def test_a_second_ctrl_c_stops_at_once_with_exit_code_130(tmp_path, data_cache, mode):
    """Iterations of several seconds (large batches of the default models), so that the second
    Ctrl-C comes while the first one waits for the iteration to end."""
    cli = Cli(["train", mode, "--iters", "50", "--logdir", str(tmp_path), "--set", f"data.cache_dir={data_cache}",
               "--set", "cot.batch_size=1024", "--set", "run.log_every=1", "--set", "run.progress_s=0",
               "--set", "run.threads=1"], tmp_path)
    code, out = cli.wait({"it 1/": cli.ctrl_c, "Ctrl-C: stopping after this iteration": cli.ctrl_c})
    assert code == 130, out[-3000:]
    assert "Ctrl-C again: stopping at once" in out and "no checkpoint was written yet" in out
    assert "Aborted!" not in out and "Traceback" not in out
    assert not list(tmp_path.glob("cot-*/checkpoint.pt"))


def _listening(pids: list[int]) -> dict[int, list[str]]:
    """The TCP addresses (``IP:PORT``) that each of ``pids`` listens on, from /proc."""
    listen = {}  # socket inode -> address
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] != "0A":  # TCP_LISTEN
                continue
            hexip, port = f[1].split(":")
            raw = bytes.fromhex(hexip)
            # the kernel prints each 32-bit word in host (little-endian) order
            ip = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            import ipaddress

            addr = ipaddress.ip_address(ip)
            listen[f[9]] = f"{addr.ipv4_mapped or addr if v6 else addr}:{int(port, 16)}"
    out = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        inodes = set()
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        out[pid] = sorted(listen[i] for i in inodes if i in listen)
    return out


def test_actor_mode_listens_on_loopback_only_and_sigterm_saves_and_exits_143(tmp_path, data_cache):
    """A default `cot-ray train` on its own local Ray: every TCP socket that the driver, Ray's
    servers and the workers listen on is on 127.0.0.1; a SIGTERM to the driver (what
    Kubernetes or `kill` sends) finishes the iteration, checkpoints and exits 143."""
    cli = Cli(["train", "--iters", "100000", "--logdir", str(tmp_path),
               *_sets(data_cache, ["eval.every=0", "run.name=term", "run.checkpoint_every=1000"])], tmp_path)
    seen: dict = {}

    def look_then_terminate():
        seen.update(_listening([cli.proc.pid] + _descendants(cli.proc.pid)))
        cli.proc.send_signal(signal.SIGTERM)

    code, out = cli.wait({"it 5/": look_then_terminate})
    assert code == 143, out[-3000:]
    addresses = [a for found in seen.values() for a in found]
    assert len([p for p, found in seen.items() if found]) >= 4, seen  # the driver, GCS, raylet, 2 workers
    assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), seen
    assert "SIGTERM: stopping after this iteration" in out and "stopped by SIGTERM" in out
    state = load_checkpoint(os.path.join(tmp_path, "term", CHECKPOINT))
    assert state["iteration"] >= 5
    assert f"interrupted: checkpoint at iteration {state['iteration']} written; continue with: " \
           f"cot-ray train --resume {tmp_path / 'term'}" in out
    assert "Traceback" not in out


def test_a_machine_with_fewer_cpus_than_workers_shares_them_and_says_so(tmp_path, data_cache):
    """`cot-ray train --nested --inner-actor` has three workers; on one CPU (an affinity mask of
    one CPU, which the local Ray takes as its CPU count) each gets a third of it."""
    one = {min(os.sched_getaffinity(0))}
    cli = Cli(["train", "--nested", "--inner-actor", "--smoke", "--logdir", str(tmp_path),
               "--set", f"data.cache_dir={data_cache}"], tmp_path, cpus=one)
    code, out = cli.wait()
    assert code == 0, out[-3000:]
    lines = out.splitlines()
    shared = [i for i, line in enumerate(lines) if "workers share" in line]
    assert shared and lines[shared[0]] == ("[cot-ray] 3 workers share the cluster's 1 CPU(s): 0.33 CPU each, one "
                                           "torch thread each (--cpus-per-worker N to choose)")
    assert shared[0] < 5  # among the first lines
    assert "inner on cpu (1 thread(s)" in out and "[cot-ray] done: 4 iterations" in out
