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
    "sphinx.ext.intersphinx",
    "numpydoc",
]

# intersphinx needs the network; the build must work offline (CI, air-gapped machines).
intersphinx_mapping: dict = {}
intersphinx_disabled_reftypes = ["*"]

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"

templates_path: list = []
exclude_patterns = ["_build", "_generated/README.rst"]
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
    ("fastconv.accuracy", "Error bounds (``fastconv.accuracy``)"),
    ("fastconv.grad", "Gradients (``fastconv.grad``)"),
    ("fastconv.plan", "Plans (``fastconv.plan``)"),
    ("fastconv.autotune", "Autotuning (``fastconv.autotune``)"),
    ("fastconv.interop.torch", "PyTorch (``fastconv.interop.torch``)"),
    ("fastconv.interop.jax", "JAX (``fastconv.interop.jax``)"),
    ("fastconv.interop.dask", "Dask (``fastconv.interop.dask``)"),
    ("fastconv.cuda", "CUDA (``fastconv.cuda``)"),
]


def _write_optional_api() -> None:
    lines = []
    for name, title in OPTIONAL_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # absent, or needs an optional framework
            print(f"[fastconv docs] API page: skipping {name} ({type(exc).__name__}: {exc})")
            continue
        lines += [title, "-" * len(title), "", f".. automodule:: {name}", "   :members:", ""]
    if not lines:
        lines = ["No optional module is importable in this environment.", ""]
    path = os.path.join(HERE, "_generated", "api_optional.rst")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = "\n".join(lines)
    old = open(path).read() if os.path.exists(path) else None
    if old != text:  # rewriting an unchanged file would force a full rebuild
        with open(path, "w") as f:
            f.write(text)


_write_optional_api()
