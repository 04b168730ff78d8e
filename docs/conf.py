"""Sphinx configuration for the crossmoe documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The build needs no network (no intersphinx). Math is typeset by MathJax,
which the browser loads from its CDN when a page is viewed.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Import the package from this checkout even when it is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import crossmoe

project = "crossmoe"
author = "crossmoe developers"
copyright = "crossmoe developers"
version = crossmoe.__version__
release = crossmoe.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "results", "Thumbs.db", ".DS_Store"]  # results/: included by results.md

# -- autodoc ------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_preserve_defaults = True
# nn.Module.forward/extra_repr docstrings say nothing about these modules.
autodoc_inherit_docstrings = False

# -- napoleon (Google style) ----------------------------------------------------
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
napoleon_use_rtype = False
# ``Shapes:`` blocks are bullet lists of tensor layouts; render them as a
# titled section with their content kept as written.
napoleon_custom_sections = ["Shapes"]

# -- MyST ---------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# -- HTML ---------------------------------------------------------------------
html_theme = "furo"
html_title = f"crossmoe {release}"


# -- generated NetHack tables -----------------------------------------------------
def _write_nethack_tables() -> None:
    """Render the shipped hypergraph's atoms and operators as Markdown tables for nethack.md."""
    import collections
    import json

    graph = json.loads((Path(__file__).resolve().parents[1] / "crossmoe/nethack/hypergraph.json").read_text())
    lines = ["| atom | holds when |", "|---|---|"]
    lines += [f"| `{c['name']}` | {c['description']} |" for c in graph["conditions"]]
    atoms, lines = lines, ["| operator | expert | requires | produces | actions |", "|---|---|---|---|---|"]
    for op in graph["operators"]:
        by_enum = collections.Counter(action.split(".")[0] for action in op["actions"])
        actions = ", ".join(
            f"{enum} ({count})" if count > 1 else next(a for a in op["actions"] if a.startswith(enum + "."))
            for enum, count in by_enum.items()
        )
        requires = ", ".join(f"`{name}`" for name in op["requires"]) or "*(always)*"
        produces = ", ".join(f"`{name}`" for name in op["produces"])
        lines.append(f"| `{op['name']}` | {op['expert']} | {requires} | {produces} | {actions} |")
    out = Path(__file__).resolve().parent / "_generated"
    out.mkdir(exist_ok=True)
    (out / "nethack_atoms.md").write_text("\n".join(atoms) + "\n")
    (out / "nethack_operators.md").write_text("\n".join(lines) + "\n")


_write_nethack_tables()
