"""MkDocs hooks: the reference pages written from the code as the site builds, never by hand.

- ``reference/cli.md``: the ``madloop`` command, from the typer app's own help (typer's
  ``get_docs_for_click``, what ``typer madloop.cli utils docs`` prints);
- ``reference/families.md``, ``reference/data.md``, ``reference/regimes.md``: every registered
  model family, data source and regime with its module's docstring and its config table's keys
  (type, default), read from the registries a config is validated against;
- a short page for ``metrics.md`` or ``reproductions.md`` while the docs folder has none, so the
  navigation never points at nothing.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: pages the site links that other work fills in; until then they say where the content will be
PLACEHOLDERS = {
    "metrics.md": (
        "# Metrics\n\nThe metric glossary (what each metric in `summary.csv` measures, its units "
        "and its theory) is being written. Meanwhile every metric suite's module docstring is "
        "in the [API reference](api.md).\n"
    ),
    "reproductions.md": (
        "# Reproductions\n\nThe papers' figures reproduced with madloop are being written up. "
        "The configs under `examples/` (e.g. `examples/mad-gaussian.toml`, Alemohammad et al.'s "
        "Gaussian study) run them today.\n"
    ),
}


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    # the checkout's madloop, installed or not (MkDocs restores sys.path after loading a hook,
    # so this happens here, not at import)
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))

    pages = {
        "reference/cli.md": cli_page(),
        "reference/families.md": families_page(),
        "reference/data.md": sources_page(),
        "reference/regimes.md": regimes_page(),
    }
    for name, text in PLACEHOLDERS.items():
        if files.get_file_from_path(name) is None:
            pages[name] = text
    for uri, text in pages.items():
        files.append(File.generated(config, uri, content=text))
    return files


# -- the command line -----------------------------------------------------------------------------
def cli_page() -> str:
    import click
    import typer.main
    from typer.cli import get_docs_for_click

    from madloop.cli import app

    command = typer.main.get_command(app)
    body = get_docs_for_click(
        obj=command, ctx=click.Context(command), name="madloop", title="Command line: madloop"
    )
    note = (
        "\n\nWritten from the typer app (`madloop.cli.app`) each time the site builds; "
        "`madloop COMMAND --help` prints the same.\n\n"
    )
    head, _, rest = body.partition("\n")
    return head + note + rest


# -- config tables --------------------------------------------------------------------------------
def type_text(annotation: Any) -> str:
    text = str(annotation) if typing.get_origin(annotation) else getattr(annotation, "__name__", "")
    text = text or str(annotation)
    for noise in ("typing.", "madloop.config.sections.", "pydantic.", "NoneType"):
        text = text.replace(noise, "None" if noise == "NoneType" else "")
    return text.replace("|", "\\|")


def default_text(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else repr(field.default_factory())
    return repr(field.default)


def fields_table(cls: Any, table: str, skip: tuple[str, ...] = ()) -> str:
    rows = [
        f"| `{table}.{name}` | `{type_text(f.annotation)}` | `{default_text(f)}` |"
        for name, f in cls.model_fields.items()
        if name not in skip
    ]
    if not rows:
        return ""
    return "| key | type | default |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n"


#: Sphinx roles (``:mod:`x` ``, ``:func:`~.y` ``): Markdown shows the name as code
_ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|obj):`~?\.?([^`]+)`")


def doc_of(obj: Any) -> str:
    """A module's or class's docstring as Markdown: dedented, Sphinx roles as plain code, RST
    double backticks kept (they read as code in Markdown too)."""
    return _ROLE.sub(r"`\1`", textwrap.dedent(inspect.getdoc(obj) or "").strip())


def families_page() -> str:
    from madloop.models.base import load_families

    out = [
        "# Model families\n",
        "Every family a `[model]` table can name (`model.family`), with the keys its table "
        "takes. How each maps the sampling bias λ to its own knob is in "
        "[Concepts](../concepts.md#the-sampling-bias). Written from the family registry as the "
        "site builds; your own model joins it through `madloop.register_family` "
        "([Your own model](../own-model.md)).\n",
    ]
    for name, spec in sorted(load_families().items()):
        cfg = spec.config
        module = sys.modules[cfg.__module__]
        knob = cfg.bias_knob
        out.append(f"## {name}\n")
        extra = f" Needs the `{spec.requires}` extra." if spec.requires else ""
        out.append(f"Bias λ maps to its {knob.label}.{extra} Module `{cfg.__module__}`.\n")
        out.append(doc_of(module) + "\n")
        out.append(fields_table(cfg, "model"))
    return "\n".join(out)


def sources_page() -> str:
    from madloop.data.base import load_sources

    out = [
        "# Data sources\n",
        "Every real-data source a `[data]` table can name (`data.source`), with the keys its "
        "table takes and the kind of data it yields (vectors, images or tokens: a family refuses "
        "the kinds it cannot fit when the config is validated). Written from the source registry "
        "as the site builds.\n",
    ]
    for name, spec in sorted(load_sources().items()):
        cfg = spec.config
        labelled = ", labelled" if cfg.labelled else ""
        out.append(f"## {name}\n")
        out.append(f"Yields {cfg.kind}{labelled}. Module `{cfg.__module__}`.\n")
        doc = doc_of(cfg) if cfg.__doc__ and cfg.__doc__ != cfg.__mro__[1].__doc__ else ""
        out.append((doc or doc_of(sys.modules[cfg.__module__])) + "\n")
        out.append(fields_table(cfg, "data"))
    return "\n".join(out)


def regimes_page() -> str:
    from madloop.config.sections import LoopConfig
    from madloop.regimes import load_regimes

    out = [
        "# Regimes\n",
        "Every regime a `[loop]` table can name (`loop.regime`): how each generation's training "
        "set is made from real data and the previous model's samples. See "
        "[Concepts](../concepts.md#the-loop-and-its-regimes). Written from the regime registry "
        "as the site builds.\n",
    ]
    for name, cls in sorted(load_regimes().items()):
        cfg = getattr(cls, "config", LoopConfig)
        out.append(f"## {name}\n")
        out.append(doc_of(cls) + "\n")
        out.append(fields_table(cfg, "loop"))
    return "\n".join(out)
