"""docs/config.md is the config's own documentation, and current.

The page is written by ``python -m cot_ray.config_docs`` from the config dataclasses' docstrings
and field comments; these tests fail when the committed page is not what that command writes
now, when a config key has no help text, and when the comment parsing attaches a comment to the
wrong field.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cot_ray import config_docs
from cot_ray.config import Config

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "config.md"


def test_docs_config_md_is_what_the_generator_writes_from_the_config_now():
    out = subprocess.run([sys.executable, "-m", "cot_ray.config_docs"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert PAGE.read_text(encoding="utf-8") == out, \
        f"docs/config.md is stale: regenerate it with `{config_docs.COMMAND}`"


def test_every_config_key_is_on_the_page_with_its_help_text_and_default():
    page = PAGE.read_text(encoding="utf-8")
    for name, cls, obj, _ in config_docs.sections(Config()):
        helps = config_docs.field_comments(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(getattr(obj, f.name)):
                continue
            assert helps.get(f.name), f"config key '{name}{f.name}' has no comment in {cls.__name__}: document it"
            row = next((line for line in page.splitlines() if line.startswith(f"| `{name}{f.name}` |")), None)
            assert row is not None, f"docs/config.md has no row for '{name}{f.name}'"
            assert config_docs._default(getattr(obj, f.name)) in row


@dataclass
class _Leaf:
    """A leaf section."""

    plain: int = 3  # trailing only
    # above only,
    # on two lines
    above: str = "x"
    # above and
    both: float = 0.5  # trailing

    # a comment after a blank line belongs to the next field only if it touches it
    after_blank: bool = False
    none: Optional[int] = None
    # a comment line under the last field belongs to no field


@dataclass
class _Root:
    leaf: _Leaf = field(default_factory=lambda: _Leaf(plain=7))  # the leaf, with plain 7
    deep: "_Mid" = field(default_factory=lambda: _Mid())


@dataclass
class _Mid:
    """A middle section."""

    inner: _Leaf = field(default_factory=_Leaf)


def test_comments_above_and_trailing_belong_to_their_field_only():
    assert config_docs.field_comments(_Leaf) == {
        "plain": "trailing only",
        "above": "above only, on two lines",
        "both": "above and trailing",
        "after_blank": "a comment after a blank line belongs to the next field only if it touches it",
        "none": "",
    }


@dataclass
class _Wider(_Leaf):
    """A leaf with one more key."""

    plain: int = 4  # declared again, with its own text
    extra: int = 1  # the subclass's own


def test_inherited_fields_keep_their_base_classes_text_unless_declared_again():
    helps = config_docs.field_comments(_Wider)
    assert helps["above"] == "above only, on two lines" and helps["plain"] == "declared again, with its own text"
    assert helps["extra"] == "the subclass's own"
    assert "| `wide.above` | str | `\"x\"` | above only, on two lines |" in \
        config_docs.section_markdown("wide.", _Wider, _Wider())


def test_the_tree_is_walked_recursively_with_each_instances_defaults_and_extra_sections():
    page = config_docs.reference(_Root(), extra=[("Extra: `_Mid`", _Mid)])
    assert "| `leaf.plain` | int | `7` | trailing only |" in page  # the instance's default, not the class's
    assert "| `deep.inner.plain` | int | `3` | trailing only |" in page  # two levels down
    assert "| `deep.inner.none` | int \\| None | `None` |  |" in page
    assert "## `leaf`\n\nThe leaf, with plain 7.\n\nA leaf section." in page  # parent's comment, then docstring
    assert "## `deep`\n\nA middle section.\n" in page and "## `deep.inner`" in page
    assert "## Extra: `_Mid`\n\nA middle section." in page
    assert "[`deep.inner`](#deepinner)" in page


def test_variants_list_only_the_defaults_that_differ():
    page = config_docs.reference(_Root(), variants=[("wide", _Root(leaf=_Leaf(plain=9)))])
    table = page.split("## Defaults for wide\n", 1)[1]
    assert "| `leaf.plain` | `9` | `7` |" in table
    assert "leaf.above" not in table
