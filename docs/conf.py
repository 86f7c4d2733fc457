"""Sphinx configuration for the fastconv documentation.

Build (warnings are errors)::

    sphinx-build -W -b html docs docs/_build/html

Figures (``docs/_static/*.png``) come from ``python docs/make_figures.py`` and
the error table (``docs/_generated/error_table.rst``) from
``python docs/make_error_table.py``; both are committed, and
``tests/test_docs.py`` checks that the scripts still run.
"""

from __future__ import annotations

import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))  # the source tree, even without installing

import fastconv  # noqa: E402

project = "fastconv"
author = "fastconv developers"
copyright = "fastconv developers"
release = fastconv.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
]

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"

templates_path: list = []
exclude_patterns = ["_build", "_generated", "make_*.py"]
html_static_path = ["_static"]
html_theme = "alabaster"
html_theme_options = {"description": "2-D multi-channel convolution kernels in Numba",
                      "fixed_sidebar": True}
master_doc = "index"
nitpicky = False

# ---------------------------------------------------------------------------
# The API pages of optional or still-growing modules are generated here, so a
# module that is absent (or does not import without its framework) is left
# out with a note in the build log instead of a warning that -W turns into
# an error.  Each entry: (module, title).
OPTIONAL_MODULES = [
    ("fastconv.accuracy", "Error bounds"),
    ("fastconv.grad", "Gradients and transposed convolution"),
    ("fastconv.plan", "Plans"),
    ("fastconv.tuning", "Autotuning"),
    ("fastconv.torch", "PyTorch"),
    ("fastconv.jax", "JAX"),
    ("fastconv.dask", "Dask"),
    ("fastconv.cuda", "CUDA"),
]
# Documented on the hand-written pages, or not part of the API.
NOT_OPTIONAL = {"fastconv.reference", "fastconv.lenet", "fastconv.winograd_math",
                "fastconv.errors", "fastconv.cpu", "fastconv.bench"}


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception as exc:  # absent, or needs an optional framework
        print(f"[fastconv docs] API page: skipping {name} ({type(exc).__name__}: {exc})")
        return False
    return True


def _write_optional_api() -> None:
    import pkgutil

    entries, seen = [], set()
    for name, title in OPTIONAL_MODULES:
        seen.add(name)
        if _importable(name):
            entries.append((name, title))
    # public modules nobody listed yet still get a page section
    for info in pkgutil.iter_modules(fastconv.__path__, "fastconv."):
        name = info.name
        if name.rsplit(".", 1)[1].startswith("_") or name in seen or name in NOT_OPTIONAL:
            continue
        if _importable(name):
            entries.append((name, name.rsplit(".", 1)[1]))
    lines = []
    for name, title in entries:
        mod = importlib.import_module(name)
        heading = f"{title} (``{name}``)"
        lines += [heading, "-" * len(heading), "", f".. automodule:: {name}", "   :members:"]
        # thin public facades re-export their adapter's functions
        if getattr(mod, "__all__", None) and all(
                getattr(getattr(mod, a, None), "__module__", name) != name for a in mod.__all__):
            lines.append("   :imported-members:")
        lines.append("")
    if not lines:
        lines = ["No optional module is importable in this environment.", ""]
    _write_if_changed(os.path.join(HERE, "_generated", "api_optional.rst"), "\n".join(lines))


def _write_if_changed(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = open(path).read() if os.path.exists(path) else None
    if old != text:  # rewriting an unchanged file would force a full rebuild
        with open(path, "w") as f:
            f.write(text)


# Pages written alongside this documentation (benchmarks, framework guides)
# join the table of contents when they exist, in .rst or, with myst-parser
# installed, in Markdown.
MORE_PAGES = ["frameworks*", "benchmarks"]
try:
    import myst_parser  # noqa: F401
except ImportError:
    HAVE_MYST = False
else:
    HAVE_MYST = True
    extensions.append("myst_parser")
    source_suffix = {".rst": "restructuredtext", ".md": "markdown"}


def _write_more_toctree() -> None:
    import glob

    suffixes = (".rst", ".md") if HAVE_MYST else (".rst",)
    found = []
    for pattern in MORE_PAGES:
        for path in sorted(glob.glob(os.path.join(HERE, pattern + ".*"))):
            stem, ext = os.path.splitext(os.path.basename(path))
            if ext in suffixes and stem not in found:
                found.append(stem)
            elif ext == ".md" and not HAVE_MYST:
                print(f"[fastconv docs] {stem}.md left out: install myst-parser to build Markdown pages")
    lines = [".. This file is generated by docs/conf.py; do not edit.", ""]
    if found:
        lines += [".. toctree::", "   :maxdepth: 2", "   :caption: More", ""]
        lines += [f"   {stem}" for stem in found] + [""]
    _write_if_changed(os.path.join(HERE, "_generated", "toctree_more.rst"), "\n".join(lines))


_write_optional_api()
_write_more_toctree()
