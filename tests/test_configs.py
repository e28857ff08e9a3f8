"""Shipped configuration files, offline: every sweep in tune_configs/ validates, malformed sweep
files fail before anything starts with one-line errors, and cluster.yaml passes Ray's own
autoscaler config schema (no cloud credentials involved)."""

from __future__ import annotations

import copy
import functools
import glob
import json
import os

import pytest
import yaml

pytest.importorskip("ray.tune")

from cot_ray.config_loading import load_config, save_config  # noqa: E402
from cot_ray.errors import ConfigError  # noqa: E402
from cot_ray.model_config import LSTMConfig, TransformerConfig  # noqa: E402
from cot_ray.sweep import spec as sweeps  # noqa: E402
from cot_ray.sweep import trial as sweep_trial  # noqa: E402
from cot_ray.sweep import tune  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = sorted(glob.glob(os.path.join(ROOT, "tune_configs", "*.yaml")))


def test_the_three_headline_sweeps_are_shipped():
    names = {os.path.basename(p) for p in SWEEPS}
    assert {"ratios_dropout.yaml", "nested.yaml", "smoke.yaml"} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=os.path.basename)
def test_every_shipped_sweep_validates(path, tmp_path):
    sweep = sweeps.load_sweep(path)
    assert sweep.varying, "a sweep must search something"
    assert sweep.tune.metric in sweeps.reported_metrics(sweep.base)
    # Every trial config the sweep can produce at its bounds is a valid training config...
    for p in sweep.params:
        for value in p.candidates():
            cfg = sweep.trial_config({p.key: value})
            assert functools.reduce(getattr, p.key.split("."), cfg) == value
    # ...that `cot-ray train --config` accepts once written out.
    save_config(cfg, str(tmp_path / "trial.yaml"))
    assert load_config(str(tmp_path / "trial.yaml")) == cfg
    with open(path, encoding="utf-8") as f:
        assert f.readline().startswith("#"), "each sweep file starts with a comment saying what it is for"


TRAINING_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=os.path.basename)
def test_every_shipped_training_config_validates_and_says_how_to_launch_it(path, tmp_path):
    """configs/*.yaml: valid training configs that survive being written out and read back, and
    whose first lines say what they are and the command that launches them (README or docs/ shows it)."""
    cfg = load_config(path)
    save_config(cfg, str(tmp_path / "resolved.yaml"))
    assert load_config(str(tmp_path / "resolved.yaml")) == cfg
    with open(path, encoding="utf-8") as f:
        head = f.read().split("\n\n")[0]
    launch = f"cot-ray train --config configs/{os.path.basename(path)}"
    assert head.startswith("#") and f"Launch:  {launch}" in head
    pages = [os.path.join(ROOT, "README.md")] + glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
    assert any(launch in open(p, encoding="utf-8").read() for p in pages), f"neither README nor docs/ shows `{launch}`"


def test_the_transformer_configs_train_transformers_of_the_lstm_defaults_widths():
    oracle, coco = (load_config(os.path.join(ROOT, "configs", f"transformer_{d}.yaml")) for d in ("oracle", "coco"))
    plain, text = load_config(None, []), load_config(None, ["data.source=coco"])
    for cfg, default in ((oracle, plain), (coco, text)):
        for name in ("generator", "mediator"):
            got, want = getattr(cfg, name), getattr(default, name)
            assert got.arch == "transformer" and got.hidden_dim == want.hidden_dim
    assert coco.data.source == "coco" and oracle.data.source == "oracle"


def test_the_architecture_and_its_sizes_are_searchable_and_validated(tmp_path):
    sweep = sweeps.load_sweep(_write(tmp_path, "search:\n  generator.arch: {choice: [lstm, transformer]}\n"
                                               "  mediator.arch: {choice: [lstm, transformer]}\n"
                                               "  mediator.num_layers: {randint: [1, 3]}\n"
                                               "  mediator.num_heads: {choice: [2, 4]}\n"
                                               "tune: {scheduler: fifo}\n"))
    assert set(sweep.varying) == {"generator.arch", "mediator.arch", "mediator.num_layers", "mediator.num_heads"}
    cfg = sweep.trial_config({"generator.arch": "transformer", "mediator.arch": "lstm", "mediator.num_layers": 3,
                              "mediator.num_heads": 2})
    assert (cfg.generator.arch, cfg.mediator.arch, cfg.mediator.num_layers) == ("transformer", "lstm", 3)
    assert isinstance(cfg.mediator, LSTMConfig)  # the LSTM trial leaves out the transformer's num_heads
    cfg = sweep.trial_config({"generator.arch": "lstm", "mediator.arch": "transformer", "mediator.num_heads": 2})
    assert (cfg.mediator.num_heads, cfg.mediator.hidden_dim) == (2, 64)
    for base in ("base: {mediator: {arch: transformer}}\n", ""):  # an LSTM base: checked on a transformer
        with pytest.raises(ConfigError, match=r"search key 'mediator.num_heads'.*must divide mediator.hidden_dim"):
            sweeps.load_sweep(_write(tmp_path, base + "search: {mediator.num_heads: {choice: [4, 5]}}\n"
                                                      "tune: {scheduler: fifo}\n"))
    with pytest.raises(ConfigError, match=r"search key 'generator.arch'.*must be one of lstm, transformer"):
        sweeps.load_sweep(_write(tmp_path, "search: {generator.arch: {choice: [lstm, gpt]}}\ntune: {scheduler: fifo}\n"))


def test_headline_and_nested_sweeps_search_what_the_issue_names():
    ratios = sweeps.load_sweep(os.path.join(ROOT, "tune_configs", "ratios_dropout.yaml"))
    assert {"cot.g_steps", "cot.m_steps", "mediator.dropout", "g_optim.lr", "m_optim.lr"} <= set(ratios.varying)
    nested = sweeps.load_sweep(os.path.join(ROOT, "tune_configs", "nested.yaml"))
    assert {"nested.enabled", "nested.depth", "nested.m_steps", "nested.g_steps"} <= set(nested.varying)
    smoke = sweeps.load_sweep(os.path.join(ROOT, "tune_configs", "smoke.yaml"))
    assert smoke.tune.num_samples >= 4 and smoke.tune.scheduler.name == "asha"
    assert smoke.base.mediator.hidden_dim <= 32 and smoke.base.run.iters <= 50  # tiny: a CPU minute


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


GOOD = """
base: {eval: {every: 5}}
search:
  {key}: {spec}
tune: {tune}
"""


def _sweep(tmp_path, key="mediator.dropout", spec="{uniform: [0.1, 0.5]}", tune="{per_trial: {iters: 10}}"):
    return sweeps.load_sweep(_write(tmp_path, GOOD.replace("{key}", key).replace("{spec}", spec)
                                    .replace("{tune}", tune)))


def test_specs_become_tune_domains_and_bounds_are_kept(tmp_path):
    sweep = _sweep(tmp_path, "cot.g_steps", "{randint: [1, 3]}")
    (p,) = sweep.params
    assert p.int_key and p.args == [1, 3]
    seen = {tune.tune_domain(p).sample() for _ in range(200)}
    assert seen == {1, 2, 3}  # randint includes both ends
    assert sweep.base.run.iters == 10 and sweep.base.run.minutes == 0  # per_trial budget applied
    assert p.clip(7.4) == 3 and p.clip(0.2) == 1 and isinstance(p.clip(2.4), int)


@pytest.mark.parametrize("key,spec,tune,expect", [
    ("mediator.dropout", "{uniform: [0.2, 1.0]}", "{}", "config key 'mediator.dropout' must be in [0, 1), got 1.0"),
    ("mediator.dropout", "{uniform: [0.5, 0.2]}", "{}", "needs lo < hi"),
    ("m_optim.lr", "{loguniform: [0.0, 0.01]}", "{}", "loguniform needs lo > 0"),
    ("cot.g_steps", "{uniform: [1, 3]}", "{}", "holds int values: use randint or choice"),
    ("mediator.dropout", "{randint: [0, 1]}", "{}", "use uniform or loguniform, not randint"),
    ("cot.g_steps", "{randint: [0, 3]}", "{}", "config key 'cot.g_steps' must be >= 1, got 0"),
    ("cot.m_step", "{randint: [1, 3]}", "{}", "unknown config key 'cot.m_step' in search"),
    ("mediator", "{choice: [1]}", "{}", "names a section"),
    ("run.iters", "{choice: [10, 20]}", "{}", "use tune.per_trial"),
    ("cot.algo", "[cot, mle]", "{}", "write {choice:"),
    ("cot.algo", "{choice: [cot, gan]}", "{}", "config key 'cot.algo' must be one of cot, mle, mixce, tailr, got 'gan'"),
    ("cot.g_steps", "{normal: [1, 3]}", "{}", "give a plain value or one of"),
    ("cot.g_steps", "{choice: []}", "{}", "needs a non-empty list"),
    ("mediator.dropout", "{uniform: [0.1, 0.5]}", "{metric: eval/bleu4}", "config key 'tune.metric' must be a metric"),
    ("mediator.dropout", "{uniform: [0.1, 0.5]}", "{mode: maximum}", "config key 'tune.mode' must be 'min' or 'max'"),
    ("mediator.dropout", "{uniform: [0.1, 0.5]}", "{num_samples: 0}", "config key 'tune.num_samples' must be >= 1"),
    ("mediator.dropout", "{uniform: [0.1, 0.5]}", "{sample_count: 3}", "unknown config key 'tune.sample_count'"),
    ("mediator.dropout", "{uniform: [0.1, 0.5]}", "{scheduler: hyperband}", "must be one of asha, pbt, fifo"),
    ("mediator.dropout", "{uniform: [0.1, 0.5]}", "{scheduler: {name: asha, perturbation_interval: 5}}",
     "is an option of pbt, not of asha"),
    ("mediator.dropout", "{uniform: [0.1, 0.5]}", "{scheduler: {name: asha, grace_period: 50}, per_trial: {iters: 20}}",
     "must be <= max_t (20)"),
    ("mediator.dropout", "{uniform: [0.1, 0.5]}", "{per_trial: {iters: 0}}", "needs iters > 0 or minutes > 0"),
    ("mediator.dropout", "{uniform: [0.1, 0.5]}", "{per_trial: {minutes: 1}}", "tune.scheduler.max_t' is needed"),
    ("mediator.dropout", "{uniform: [0.1, 0.5]}", "{scheduler: {name: pbt, perturbation_interval: 7}}",
     "must be a multiple of eval.every (5)"),
    ("generator.hidden_dim", "{choice: [16, 32]}", "{scheduler: pbt}", "pbt needs a search key it can perturb"),
])
def test_bad_sweeps_fail_before_anything_starts_with_one_line(tmp_path, key, spec, tune, expect):
    with pytest.raises(ConfigError) as e:
        _sweep(tmp_path, key, spec, tune)
    msg = str(e.value)
    assert expect in msg, msg
    assert "\n" not in msg and msg.startswith(str(tmp_path / "sweep.yaml") + ": ")


def test_metric_must_be_reported_by_every_trial(tmp_path):
    # An MLE run has no mediator: jsd_mediator cannot rank trials that may be MLE.
    with pytest.raises(ConfigError, match="jsd_mediator"):
        _sweep(tmp_path, "cot.algo", "{choice: [cot, mle]}", "{metric: eval/jsd_mediator}")
    cot_only = _sweep(tmp_path, "cot.algo", "{choice: [cot]}", "{metric: eval/jsd_mediator}")
    assert cot_only.tune.metric == "eval/jsd_mediator"


@pytest.mark.parametrize("text,expect", [
    ("base: {cot: {g_step: 2}}\n", "unknown config key 'cot.g_step'"),
    ("serach: {}\n", "unknown section 'serach'"),
    ("search: [1, 2]\n", "section 'search' must map config keys to specs"),
    ("base: {cot: {g_steps: 2}\n", "is not valid YAML at line"),
    ("tune: {scheduler: {name: pbt}}\nsearch: {mediator.dropout: {uniform: [0.1, 0.5]}}\nbase: {eval: {every: 0}}\n",
     "config key 'eval.every' must be >= 1 for the pbt scheduler"),
])
def test_malformed_files_and_unknown_keys(tmp_path, text, expect):
    with pytest.raises(ConfigError) as e:
        sweeps.load_sweep(_write(tmp_path, text))
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_sweeps_run_on_actors_and_join_only_well_formed_addresses(tmp_path):
    with pytest.raises(ConfigError, match="config key 'runtime.mode' must be 'actors' in a sweep"):
        sweeps.load_sweep(_write(tmp_path, "base: {runtime: {mode: local}}\nsearch: {cot.g_steps: {randint: [1, 2]}}\n"
                                           "tune: {scheduler: fifo}\n"))
    with pytest.raises(ConfigError, match="config key 'runtime.address' must be"):
        tune.connect("nowhere", 3)


def test_cli_reports_a_bad_sweep_in_one_line_before_starting_ray(tmp_path):
    from click.testing import CliRunner

    from cot_ray.cli import main

    path = _write(tmp_path, "search: {mediator.dropout: {uniform: [0.5, 1.5]}}\n")
    res = CliRunner().invoke(main, ["tune", path, "--storage", str(tmp_path / "tune")])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"Error: {path}: search key 'mediator.dropout' {{\"uniform\": [0.5, 1.5]}}: config key "
        "'mediator.dropout' must be in [0, 1), got 1.5"]
    assert not (tmp_path / "tune").exists()


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        sweeps.load_sweep(str(tmp_path / "nope.yaml"))


def test_pbt_keeps_its_perturbations_inside_the_ranges(tmp_path):
    sweep = _sweep(tmp_path, "mediator.dropout", "{uniform: [0.1, 0.5]}",
                   "{scheduler: {name: pbt, resample_probability: 0.0}}")
    pbt = tune._scheduler(sweep)
    explore = pbt._custom_explore_fn
    assert explore({"mediator.dropout": 0.6, "other": 3}) == {"mediator.dropout": 0.5, "other": 3}
    assert explore({"mediator.dropout": 0.05})["mediator.dropout"] == 0.1
    assert sweep.tune.scheduler.perturbation_interval == 5  # one evaluation by default


def test_optimizer_hyperparameters_follow_the_perturbed_config():
    cfg = load_config(None, ["g_optim.lr=0.002", "m_optim.lr=0.02", "m_optim.beta1=0.5"])
    state = {"g": {"optim": {"param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95)}]}},
             "m": {"optim": {"param_groups": [{"lr": 3e-3, "betas": (0.9, 0.95)}] * 2}}}
    sweep_trial.set_optimizer_hyperparameters(state, cfg)
    assert state["g"]["optim"]["param_groups"][0] == {"lr": 0.002, "betas": (0.9, 0.95)}
    assert all(g == {"lr": 0.02, "betas": (0.5, 0.95)} for g in state["m"]["optim"]["param_groups"])


# ----------------------------------------------------------------------------- cluster.yaml


def _cluster() -> dict:
    with open(os.path.join(ROOT, "cluster.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_cluster_yaml_passes_rays_autoscaler_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _cluster()
    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.validate(raw, schema)  # the file as written
    validate_config(prepare_config(copy.deepcopy(raw)))  # and as `ray up` fills it out
    # The schema is strict: a misspelt field would not pass.
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_cluster_yaml_has_a_cpu_head_and_autoscaled_gpu_workers_that_install_cot_ray():
    c = _cluster()
    types = c["available_node_types"]
    head = types[c["head_node_type"]]
    assert not head.get("resources", {}).get("GPU") and "g" not in head["node_config"]["InstanceType"][:1]
    gpu = [t for name, t in types.items() if name != c["head_node_type"]]
    assert len(gpu) == 1 and gpu[0]["resources"]["GPU"] >= 1
    assert 0 <= gpu[0]["min_workers"] < gpu[0]["max_workers"] <= c["max_workers"]
    assert 1 <= c["idle_timeout_minutes"] <= 30
    assert "IamInstanceProfile" in gpu[0]["node_config"]  # trials write their checkpoints to S3


def _requirement(name: str):
    """pyproject.toml's requirement on ``name`` (a packaging Requirement)."""
    import tomllib

    from packaging.requirements import Requirement

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return next(r for r in reqs if r.name == name), project["requires-python"]


def test_cluster_yaml_pins_releases_the_project_allows_and_ci_tests():
    """The nodes run Ray's image of a Ray release and a Python that pyproject.toml allows, and
    install the torch release that .ci/run's pinned leg tests (also allowed); the code itself
    comes with each job (--working-dir). What is installed here plays no part."""
    import re

    from packaging.specifiers import SpecifierSet

    c = _cluster()
    image = re.fullmatch(r"rayproject/ray:([0-9.]+)-py3([0-9]+)", c["docker"]["head_image"])
    assert image, c["docker"]["head_image"]
    ray_release, python = image.group(1), f"3.{image.group(2)}"
    assert c["docker"]["worker_image"] == f"{c['docker']['head_image']}-gpu"
    ray_req, requires_python = _requirement("ray")
    assert ray_req.specifier.contains(ray_release), (ray_release, str(ray_req))
    assert SpecifierSet(requires_python).contains(python), (python, requires_python)
    pins = {m for cmd in c["setup_commands"] for m in re.findall(r'"torch==([0-9.]+)"', cmd)}
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        tested = re.findall(r"^tested_torch=([0-9.]+)$", f.read(), re.M)
    assert pins == set(tested) and len(pins) == 1, (pins, tested)
    assert _requirement("torch")[0].specifier.contains(pins.pop())
    assert set(c["file_mounts"]) == {"~/.ray/auth_token"}  # the cluster's token only; jobs ship the code


# ----------------------------------------------------------------------------- sweeps on a cluster

def test_a_trial_survives_lost_nodes_by_default_and_spread_is_strict(tmp_path):
    sweep = _sweep(tmp_path)
    assert sweep.tune.max_failures == 2  # a lost node restarts the trial from its checkpoint
    cfg = sweep.base
    assert sweep_trial.trial_resources(cfg, {"CPU": 1.0}).strategy == "PACK"
    cfg.runtime.spread = True
    pgf = sweep_trial.trial_resources(cfg, {"CPU": 1.0, "GPU": 1.0})
    assert pgf.strategy == "STRICT_SPREAD"  # as --spread means for a single run
    assert pgf.bundles == [{"CPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}]


def test_ray_client_sweeps_need_storage_the_cluster_can_name(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path)
    monkeypatch.setattr(tune, "connect", lambda *a: pytest.fail("connected before checking the storage"))
    with pytest.raises(ConfigError, match=r"'runs/tune' is relative to this machine, but with --address "
                                          r"ray://head:10001 the sweep's driver runs on the cluster"):
        tune.run_sweep(sweep, address="ray://head:10001")


# ----------------------------------------------------------------------------- evaluation budget

def test_a_short_time_budget_sizes_the_evaluation_and_given_sizes_are_kept():
    from cot_ray.run_policy import budgeted_eval_note

    two = load_config(None, values={"run.minutes": 2.0, "run.iters": 0})
    assert (two.eval.num_samples, two.eval.num_test, two.eval.num_train, two.eval.bleu_samples) == (1024, 1024, 256, 128)
    assert budgeted_eval_note(two) == ("evaluations sized to the 2-minute budget (1,024 samples, 1,024 test "
                                       "sequences); the full evaluation: --set eval.num_samples=9984 --set "
                                       "eval.num_test=9984")
    ten = load_config(None, ["eval.num_test=512"], values={"run.minutes": 10.0, "run.iters": 0})
    assert (ten.eval.num_samples, ten.eval.num_test, ten.eval.num_train) == (4992, 512, 1024)
    for full in (load_config(None, values={"run.minutes": 20.0, "run.iters": 0}), load_config(None, ["run.iters=100"])):
        assert full.eval.num_samples == full.eval.num_test == 9984 and budgeted_eval_note(full) is None
    tiny = load_config(None, values={"run.minutes": 0.01, "run.iters": 0})
    assert tiny.eval.num_samples == 1024 and tiny.eval.num_train == 256  # at least a tenth, a multiple of 64


def test_arch_selects_the_model_sections_keys_in_any_key_order():
    """``arch`` applies first in one mapping: the keys both architectures have keep their values,
    the others take the new architecture's defaults; a key of the other one names it."""
    for order in (["mediator.arch=transformer", "mediator.num_heads=8"], ["mediator.num_heads=8", "mediator.arch=transformer"]):
        m = load_config(None, order).mediator
        assert m == TransformerConfig(hidden_dim=64, dropout=0.5, emb_dropout=0.25, num_heads=8)
    there = load_config(None, ["mediator.arch=transformer", "mediator.ff_dim=48"])
    back = load_config(None, ["mediator.arch=lstm"], base=there).mediator
    assert back == LSTMConfig(emb_dim=32, hidden_dim=64, dropout=0.5, emb_dropout=0.25)  # emb_dim: the default
    with pytest.raises(ConfigError, match=r"^config key 'generator.num_heads' belongs to arch 'transformer', and "
                                          r"generator.arch is 'lstm': set generator.arch=transformer, or drop the key$"):
        load_config(None, ["generator.num_heads=2"])
    with pytest.raises(ConfigError, match=r"^config key 'generator.emb_dim' belongs to arch 'lstm', and generator.arch "
                                          r"is 'transformer', whose embedding width is generator.hidden_dim \(8\), got 16"):
        load_config(None, ["generator.arch=transformer", "generator.hidden_dim=8", "generator.emb_dim=16"])
    with pytest.raises(ConfigError, match=r"^unknown config key 'mediator.heads' \(valid keys here: arch, "):
        load_config(None, ["mediator.arch=transformer", "mediator.heads=2"])


def test_a_config_yaml_of_the_flat_model_config_loads_to_the_same_models(tmp_path):
    """config.yaml files of earlier versions hold every key of the one flat model config in every
    model section: an LSTM's transformer keys (which it ignored) are dropped, and a transformer's
    emb_dim loads when it equals hidden_dim, as those versions required."""
    flat = {"emb_dim": 16, "hidden_dim": 16, "num_layers": 2, "dropout": 0.1, "emb_dropout": 0.0, "num_heads": 2,
            "ff_dim": 0, "tie_output": True, "init": "normal", "init_std": 0.1}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"generator": {"arch": "lstm", **flat}, "mediator": {"arch": "transformer", **flat}}))
    cfg = load_config(str(path))
    assert cfg.generator == LSTMConfig(emb_dim=16, hidden_dim=16, num_layers=2, dropout=0.1)
    assert cfg.mediator == TransformerConfig(hidden_dim=16, num_layers=2, dropout=0.1, num_heads=2)
    save_config(cfg, str(tmp_path / "resolved.yaml"))
    assert load_config(str(tmp_path / "resolved.yaml")) == cfg
    assert "num_heads" not in yaml.safe_load((tmp_path / "resolved.yaml").read_text())["generator"]
    path.write_text(yaml.safe_dump({"mediator": {"arch": "transformer", **flat, "emb_dim": 8}}))
    with pytest.raises(ConfigError, match="config key 'mediator.emb_dim' belongs to arch 'lstm'"):
        load_config(str(path))
    assert load_config(os.path.join(ROOT, "docs", "cot_best", "cot_s0", "config.yaml")).generator.arch == "lstm"
