"""docs/config.md, the config reference, written from the config's own field documentation.

Every config dataclass documents itself: a class docstring, and per field a trailing ``# comment``
and/or comment lines directly above it. :func:`reference` walks a config *instance* (so that a
section's defaults are the ones it really gets: the mediator's differ from the generator's though
both are the same class), one section per dataclass-valued field, recursively, and lists each
key with its dotted name, type, default and that help text. Nothing here knows the sections:
whatever dataclasses the tree holds are documented, plus any ``(title, dataclass)`` pairs given
as ``extra`` (for configs that the tree selects by name, such as one per architecture).

    python -m cot_ray.config_docs > docs/config.md

regenerates the page; tests/test_config_docs.py fails when it is stale. Imports neither torch
nor Ray.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing
from typing import Any, Iterable, Optional

COMMAND = "python -m cot_ray.config_docs > docs/config.md"


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its help text: the comment lines directly above the field (no blank line
    between) followed by its trailing comment, joined into one paragraph. Fields inherited from
    dataclass bases keep their base's text unless the class declares them again with a comment."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update({k: v for k, v in _own_field_comments(klass).items() if v or k not in out})
    return out


def _own_field_comments(cls: type) -> dict[str, str]:
    """:func:`field_comments` of the fields that ``cls``'s own source declares."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments: dict[int, str] = {}  # line number (1-based) -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef), cls
    out = {}
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        line = node.lineno - 1
        while line >= 1 and line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        trailing = comments.get(node.end_lineno)
        if trailing is not None and lines[node.end_lineno - 1].lstrip().startswith("#"):
            trailing = None  # a comment line of its own is not the field's trailing comment
        out[node.target.id] = " ".join(above + ([trailing] if trailing else []))
    return out


def type_name(tp: Any) -> str:
    """A field type as a reader writes it: int, float, str, bool, X | None."""
    if typing.get_origin(tp) is typing.Union:
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _default(value: Any) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value!r}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _doc(cls: type) -> str:
    """The class docstring as Markdown (reST's ``x`` and :func:`x` become `x`); "" if none."""
    doc = cls.__doc__ or ""
    if doc.startswith(cls.__name__ + "("):  # dataclasses' generated signature: no docstring written
        return ""
    doc = re.sub(r":\w+:`([^`]+)`", r"`\1`", inspect.cleandoc(doc))
    return doc.replace("``", "`")


def sections(obj: Any, prefix: str = "", note: str = "") -> Iterable[tuple[str, type, Any, str]]:
    """(dotted section name, class, instance, the parent's comment on the field) for the dataclass
    instance ``obj`` and every dataclass instance below it, depth first."""
    yield prefix, type(obj), obj, note
    notes = field_comments(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from sections(value, f"{prefix}{f.name}.", notes.get(f.name, ""))


def section_markdown(name: str, cls: type, obj: Any, note: str = "") -> str:
    """One section: its title, the class docstring (and the parent's comment), a table of keys."""
    hints = typing.get_type_hints(cls)
    helps = {k: v.replace("``", "`") for k, v in field_comments(cls).items()}
    rows = []
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name) if obj is not None else _field_default(f)
        if dataclasses.is_dataclass(value):
            continue  # its own section
        rows.append(f"| `{name}{f.name}` | {_cell(type_name(hints[f.name]))} | {_cell(_default(value))} | "
                    f"{_cell(helps.get(f.name, ''))} |")
    parts = [f"## `{name.rstrip('.')}`" if name else "## The top level", ""]
    doc = _doc(cls)
    if note:
        parts += [note[0].upper() + note[1:] + ("" if note.endswith(".") else "."), ""]
    if doc:
        parts += [doc, ""]
    if rows:
        parts += ["| key | type | default | what it does |", "|---|---|---|---|", *rows, ""]
    return "\n".join(parts)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


HEADER = """\
# Configuration reference

<!-- Written by `{command}` from the docstrings and field comments of the config's
dataclasses: edit those, then run the command (tests/test_config_docs.py checks it is current). -->

A run's configuration is one tree of typed sections. Set keys in a YAML file (`--config
FILE.yaml`, sections as mappings) and/or with `--set section.key=value` (repeatable; the value is
read as YAML); flags such as `--iters` or `--nested` set keys too. Unknown keys, wrong types and
impossible values are one-line errors naming the key. A run saves its resolved config as
`RUN_DIR/config.yaml`, which `--config` takes as it is.

```yaml
cot: {{g_steps: 1, m_steps: 2}}
mediator: {{dropout: 0.3}}
run: {{iters: 5000}}
```

The defaults below are those of the synthetic oracle (`data.source: oracle`).
"""


def reference(config: Any, extra: Iterable[tuple[str, type]] = (),
              variants: Iterable[tuple[str, Any]] = ()) -> str:
    """The whole page: every section of the dataclass instance ``config``, then each
    ``(title, dataclass)`` of ``extra`` with its class defaults, then for each ``(label, config)``
    of ``variants`` the keys whose defaults differ from ``config``'s."""
    parts = [HEADER.format(command=COMMAND)]
    tree = list(sections(config))
    root_doc = _doc(type(config))
    parts.append("\n".join(([root_doc, ""] if root_doc else []) + ["Sections: " + ", ".join(
        f"[`{name.rstrip('.')}`](#{name.rstrip('.').replace('.', '')})" for name, *_ in tree if name) + ".", ""]))
    for name, cls, obj, note in tree:
        if name or any(not dataclasses.is_dataclass(getattr(obj, f.name)) for f in dataclasses.fields(obj)):
            parts.append(section_markdown(name, cls, obj, note))
    for title, cls in extra:
        parts.append(section_markdown("", cls, None).replace("## The top level", f"## {title}", 1))
    for label, other in variants:
        parts.append(variant_markdown(label, config, other))
    return "\n".join(parts).rstrip("\n") + "\n"


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaves(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def variant_markdown(label: str, base: Any, other: Any) -> str:
    """The keys whose defaults ``other`` changes from ``base``'s, as a table."""
    a, b = _leaves(base), _leaves(other)
    rows = [f"| `{k}` | {_cell(_default(b[k]))} | {_cell(_default(a[k]))} |"
            for k in b if k in a and a[k] != b[k]]
    return "\n".join([f"## Defaults for {label}", "",
                      "| key | default | (oracle) |", "|---|---|---|", *rows, ""])


def main(argv: Optional[list[str]] = None) -> None:
    """Print docs/config.md: the config tree (its model sections as their defaults' architecture
    has them), then the keys of every registered architecture (a model section holds those of the
    one its ``arch`` names)."""
    from .config import Config, default_config
    from .model_config import ARCH_CONFIGS

    archs = [(f"Architecture `{name}`", cls) for name, cls in ARCH_CONFIGS.items()]
    print(reference(Config(), extra=archs,
                    variants=[("text (`data.source: coco` or `text`)", default_config("coco"))]), end="")


if __name__ == "__main__":
    main()
