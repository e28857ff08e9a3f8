"""The commands of README and docs/, run as a user types them; the synopsis; the links.

Every command in the ``bash`` code blocks of README.md and docs/**/*.md (the pages) that runs
cot-ray (``cot-ray ...`` or ``python -m cot_ray.cli ...``) is either run here or excluded by name
below, with the reason and the script that runs it instead. A command added to a page is run as
it is, so one that cannot work here (a placeholder this test cannot fill, a GPU it asks for)
fails until it is fixed or excluded; an exclusion that no page shows any more fails too. A
command shown on several pages runs once.

How a command runs: through the installed ``cot-ray`` entry point, as a separate process, in one
fresh directory shared by all of them (it holds copies of ``tune_configs/`` and ``configs/``, since
the pages' commands run from the repository root), in the pages' order (README first, then
docs/ by path), in the mode they use (the default, actors on a local Ray), with ``--smoke``
appended. ``--smoke`` is the documented way to shrink a command's budget and nothing else
(docs/cli.md): a few iterations and small evaluations, two short trials for a sweep. Three rules
turn the pages' text into commands:

* ``#`` starts a comment, a trailing backslash continues the line, and of a line joined by
  ``&&`` only the cot-ray part runs (``pip install -e .`` is the test environment's own set-up);
* a path with the example date ``20250101-120000`` (``runs/tune/smoke-20250101-120000``)
  stands for the newest directory of that name that an earlier command made here;
* ``ray job submit ...`` needs a cluster: such commands must be excluded.

README's synopsis (the plain code block of "Command line") is checked against the CLI's options
instead: every flag it shows exists, and every flag of every command is shown. Every relative
link of the pages (files, and ``#anchors`` of headings) resolves, and README stays a page a
newcomer reads in a few minutes (at most ``README_MAX_LINES`` lines).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cpu_only_env

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README] + sorted((ROOT / "docs").rglob("*.md"))
README_MAX_LINES = 300
PLACEHOLDER_DATE = "20250101-120000"
SMOKE = "--smoke"

# Commands of the pages that need what a CPU-only machine without a cluster does not have:
# command as a page shows it -> (what it needs, the script that runs it instead, what that script runs).
EXCLUDED = {
    "ray job submit --working-dir . -- python -m cot_ray.cli train --iters 50":
        ("a Ray cluster started by `ray up`, joined through $RAY_ADDRESS", "scripts/local_cluster_check.sh",
         "python -m cot_ray.cli train --iters 50"),
    "ray job submit --working-dir . -- python -m cot_ray.cli tune tune_configs/smoke.yaml --storage /an/absolute/path":
        ("a Ray cluster started by `ray up`", "scripts/local_cluster_check.sh",
         "python -m cot_ray.cli tune tune_configs/smoke.yaml --storage"),
    "ray job submit --working-dir . -- python -m cot_ray.cli train --gpus-per-worker 1 --minutes 60":
        ("GPU nodes (the AWS cluster of cluster.yaml)", "scripts/gpu_check.sh",
         "-m cot_ray.cli train --gpus-per-worker 1 --minutes 60 --smoke"),  # "$PY" -m ...: the checked Python
    "ray job submit --working-dir . -- python -m cot_ray.cli tune tune_configs/ratios_dropout.yaml "
    "--set runtime.gpus_per_worker=1 --storage s3://YOUR-BUCKET/cot-ray-tune":
        ("GPU nodes and an S3 bucket on AWS (the script stores the sweep locally)", "scripts/gpu_check.sh",
         "-m cot_ray.cli tune tune_configs/ratios_dropout.yaml --set runtime.gpus_per_worker=1 --smoke"),
}


def code_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced code block of a Markdown text."""
    blocks, lang, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                blocks.append((lang, lines))
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def shell_lines(lines: list[str]) -> list[str]:
    """Commands of a shell block: comments dropped, continuations joined, blanks skipped."""
    out, pending = [], ""
    for line in lines:
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = (pending + line.strip()).strip()
        pending = ""
        if line:
            out.append(" ".join(line.split()))
    return out


def readme_commands(text: str) -> list[str]:
    """Every command of a page's bash blocks that runs cot-ray, in order."""
    found = []
    for lang, lines in code_blocks(text):
        if lang != "bash":
            continue
        for line in shell_lines(lines):
            for part in (p.strip() for p in line.split("&&")):
                if part.startswith("cot-ray ") or "cot_ray.cli" in part:
                    found.append(part)
    return found


COMMANDS = list(dict.fromkeys(c for page in PAGES for c in readme_commands(page.read_text(encoding="utf-8"))))
TO_RUN = [c for c in COMMANDS if c not in EXCLUDED]


def test_the_pages_have_the_commands_this_test_knows():
    assert len(TO_RUN) >= 8, COMMANDS  # the parser still finds the pages' commands
    stale = [c for c in EXCLUDED if c not in COMMANDS]
    assert not stale, f"excluded commands that no page shows any more (remove them from EXCLUDED): {stale}"
    for cmd, (_, script, runs) in EXCLUDED.items():  # the script named as covering a command runs it
        body = " ".join((ROOT / script).read_text(encoding="utf-8").replace("\\\n", " ").split())
        assert runs in body, f"{script} does not run {runs!r} (shown: {cmd!r})"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A fresh directory laid out as the pages' commands expect the repository root to be."""
    d = tmp_path_factory.mktemp("readme")
    for folder in ("tune_configs", "configs"):
        shutil.copytree(ROOT / folder, d / folder)
    return d


def entry_point() -> str:
    exe = shutil.which("cot-ray", path=os.path.dirname(sys.executable))
    assert exe, "the cot-ray entry point is not installed next to this Python: pip install -e ."
    return exe


def fill_placeholders(args: list[str], cwd: Path) -> list[str]:
    out = []
    for a in args:
        if PLACEHOLDER_DATE in a:
            stem, rest = a.split(PLACEHOLDER_DATE, 1)
            made = sorted(glob.glob(str(cwd / (stem + "*"))), key=os.path.getmtime)
            assert made, (f"the example path {a!r} stands for a directory that an earlier command of the pages "
                          "makes; none exists (run the whole module, in the pages' order)")
            a = os.path.relpath(made[-1], cwd) + rest
        out.append(a)
    return out


@pytest.mark.parametrize("command", TO_RUN)
def test_documented_command_runs_as_written(command, workdir):
    assert command.startswith("cot-ray "), \
        f"the command {command!r} needs more than a CPU machine: run it in a script and add it to EXCLUDED"
    args = fill_placeholders(shlex.split(command)[1:], workdir) + [SMOKE]
    res = subprocess.run([entry_point(), *args], cwd=workdir, capture_output=True, text=True, timeout=900,
                         env=cpu_only_env())  # the commands start their own local Ray; CPU only
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"`{command} {SMOKE}` exited {res.returncode}:\n{out[-3000:]}"
    sub = args[0]
    if sub == "train":
        assert "[cot-ray] done: 4 iterations" in out, out[-2000:]
        assert "starting a local Ray" in out and "workers: generator on" in out, out[-2000:]  # actor mode
    elif sub == "tune":
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert summary["trials"] >= 1 and not summary["interrupted"] and summary["best_config"], summary
        assert os.path.exists(summary["best_config"])


# ----------------------------------------------------------------------------- the synopsis


def synopsis() -> dict:
    """README's synopsis: command ("train", "data synthetic", ...) -> the flags it shows."""
    text = README.read_text(encoding="utf-8").split("## Command line", 1)[1]
    lang, lines = code_blocks(text)[0]
    assert lang == "", "the first block of 'Command line' is the synopsis, a plain code block"
    shown: dict = {}
    name = None
    for line in lines:
        if line.startswith("cot-ray "):
            words = line.split()
            name = " ".join(words[1:3]) if words[1] == "data" else words[1]
            shown[name] = set()
        shown[name] |= set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", line))
    return shown


def cli_flags() -> dict:
    import click

    from cot_ray.cli import main

    out = {}

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                walk(cmd, prefix + name + " ")
                continue
            flags = set()
            for p in cmd.params:
                if isinstance(p, click.Option):
                    flags |= {o for o in p.opts + p.secondary_opts}
            out[prefix + name] = flags - {"--help"}

    walk(main, "")
    return out


def test_readme_synopsis_shows_every_command_and_flag_of_the_cli():
    shown, real = synopsis(), cli_flags()
    assert set(shown) == set(real), "README's synopsis and the CLI have different commands"
    for name in real:
        assert shown[name] == real[name], (f"`cot-ray {name}`: README's synopsis shows {sorted(shown[name] - real[name])}"
                                           f" that the CLI lacks and lacks {sorted(real[name] - shown[name])}")


# ----------------------------------------------------------------------------- the pages' links


def heading_anchors(text: str) -> set:
    """The #anchors GitHub gives a page's headings: lower case, punctuation but - and _ dropped,
    spaces to -, a repeated heading getting -1, -2, ..."""
    anchors, seen = set(), {}
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def relative_links(text: str) -> list[str]:
    """The targets of a page's Markdown links and images that are not URLs (code blocks skipped)."""
    prose = "\n".join(lang_lines for lang_lines in re.split(r"^```.*?^```", text, flags=re.M | re.S))
    prose = re.sub(r"`[^`\n]*`", "", prose)  # inline code is not a link
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_of_the_pages_resolves(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in relative_links(text):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)} links to what is not there: {broken}"


def test_link_checking_finds_files_and_anchors():
    page = "# A page\n\n## The `cot` section (2)\n\n## Same\n\n## Same\n\n```\n# not a heading\n```\n"
    assert heading_anchors(page) == {"a-page", "the-cot-section-2", "same", "same-1"}
    links = relative_links("[a](docs/x.md#y) ![p](p.png) [u](https://e.org) `[c](code.md)`\n```\n[d](in_block.md)\n```\n")
    assert links == ["docs/x.md#y", "p.png"]


def test_readme_is_short_and_every_docs_page_is_linked_from_it_or_another_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, \
        f"README has {len(text.splitlines())} lines: move detail to a docs/ page (at most {README_MAX_LINES})"
    linked = {(page.parent / t.partition("#")[0]).resolve() for page in PAGES
              for t in relative_links(page.read_text(encoding="utf-8")) if t.partition("#")[0]}
    top = [p for p in (ROOT / "docs").glob("*.md")]
    unlinked = [str(p.relative_to(ROOT)) for p in top if p.resolve() not in linked]
    assert not unlinked, f"no page links to {unlinked}: a reader cannot find them"
