"""Peak memory and start-up time of loading a text corpus, against its size.

Writes synthetic corpora (Zipf-distributed words, 50,000 of them, 5 to 30 words a line) of the
given sizes into a temporary directory, and loads each in a fresh process: the time until the
data set is ready for training (``load_dataset``, then a first batch) and the process's peak
resident memory (``ru_maxrss``). Three ways: ``cold``, this code with an empty cache (the two
encoding passes, then the memory-mapped load); ``warm``, this code again (the cache is read);
``sample``, what ``cot-ray sample`` of a run of that corpus loads (its vocabulary only). With
``--old-code DIR`` (a checkout of an earlier commit, e.g. ``git worktree add DIR COMMIT``) the
same load by that code as ``old``, and the ratios old / new, all measured in this one run.
Prints one JSON line.

    python benchmarks/corpus_memory.py [--sizes 10,50,200] [--old-code DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

WORDS = 50_000
CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import cot_ray
from cot_ray.config_loading import load_config
from cot_ray.data import BatchSampler, load_dataset
train, test, cache, mode, run_dir = sys.argv[1:6]
cfg = load_config(None, ["data.source=text", f"data.train_path={train}", f"data.test_path={test}",
                         f"data.cache_dir={cache}"])
if mode == "sample":  # a run's saved vocabulary and length: what `cot-ray sample` loads
    cfg.data.vocab_path, cfg.data.max_len = f"{run_dir}/vocab.json", int(open(f"{run_dir}/max_len").read())
    data = load_dataset(cfg.data, run_dir, "sample")
else:
    data = load_dataset(cfg.data)
    BatchSampler(data.train, 64, seed=0).next()
    if mode == "cold":  # keep what a sample run needs, for the "sample" row
        data.vocab.save(f"{run_dir}/vocab.json")
        open(f"{run_dir}/max_len", "w").write(str(data.seq_len))
seconds = time.perf_counter() - t0
print(json.dumps({"s": round(seconds, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "sentences": len(data.train) + (0 if data.valid is None else len(data.valid)), "seq_len": data.seq_len,
                  "code": cot_ray.__file__}))
"""


def write_corpus(path: str, megabytes: float, seed: int) -> None:
    """About ``megabytes`` MB of lines of Zipf(1.1)-drawn words w0..w49999."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, WORDS + 1)
    p = ranks ** -1.1
    p /= p.sum()
    words = np.array([f"w{i}" for i in range(WORDS)], dtype=object)
    target, written = int(megabytes * 1e6), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            lengths = rng.integers(5, 31, size=20_000)
            ids = rng.choice(WORDS, size=int(lengths.sum()), p=p)
            cuts = np.cumsum(lengths)[:-1]
            text = "\n".join(" ".join(s) for s in np.split(words[ids], cuts)) + "\n"
            f.write(text)
            written += len(text)


def measure(code_dir: str, train: str, test: str, cache: str, mode: str, run_dir: str) -> dict:
    env = {**os.environ, "PYTHONPATH": code_dir, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", CHILD, train, test, cache, mode, run_dir], env=env,
                         capture_output=True, text=True, check=True, cwd=run_dir)  # not a folder with cot_ray/
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not res.pop("code").startswith(os.path.join(code_dir, "")):
        raise SystemExit(f"the {mode} load did not import cot_ray from {code_dir}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,50,200", help="corpus sizes in MB, comma-separated")
    ap.add_argument("--old-code", default="", metavar="DIR", help="a checkout of earlier code to compare with")
    args = ap.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    with tempfile.TemporaryDirectory(prefix="corpus-memory-") as tmp:
        test = os.path.join(tmp, "test.txt")
        write_corpus(test, 1, seed=1)
        for mb in [float(s) for s in args.sizes.split(",")]:
            train = os.path.join(tmp, f"train-{mb:g}MB.txt")
            write_corpus(train, mb, seed=0)
            cache, run_dir = os.path.join(tmp, f"cache-{mb:g}"), os.path.join(tmp, f"run-{mb:g}")
            os.makedirs(run_dir)
            row = {"mb": round(os.path.getsize(train) / 1e6, 1)}
            if args.old_code:
                row["old"] = measure(os.path.abspath(args.old_code), train, test, cache, "old", run_dir)
            for mode in ("cold", "warm", "sample"):
                row[mode] = measure(here, train, test, cache, mode, run_dir)
            if args.old_code:
                for mode in ("cold", "warm", "sample"):
                    row[f"old_over_{mode}"] = {
                        "s": round(row["old"]["s"] / row[mode]["s"], 1),
                        "peak_rss": round(row["old"]["peak_rss_mb"] / row[mode]["peak_rss_mb"], 1)}
            rows.append(row)
            os.remove(train)
            print(f"[corpus_memory] {json.dumps(row)}", file=sys.stderr)
    print(json.dumps({"benchmark": "corpus_memory", "cpus": os.cpu_count(), "rows": rows}))


if __name__ == "__main__":
    main()
