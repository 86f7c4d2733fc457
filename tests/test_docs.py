"""The documentation is tested: its examples run, its figures and error table regenerate, it builds.

* every ``>>>`` example in ``docs/*.rst`` and ``docs/*.md`` runs as a doctest
  (one namespace per page, in page order), and every ``.. code-block::
  python`` / fenced ````` ```python ````` block is executed; other languages
  (bash, text) are not run;
* ``docs/make_figures.py`` and ``docs/make_error_table.py`` run into a
  temporary folder (the error-table script fails on its own if a measured
  error exceeds its stated bound), and the committed outputs match what they
  produce now in shape;
* ``sphinx-build -W -b html`` succeeds (skipped when Sphinx or numpydoc is
  not installed: ``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import doctest
import glob
import os
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(glob.glob(os.path.join(DOCS, "*.rst")) + glob.glob(os.path.join(DOCS, "*.md")))
# Pages this suite must find examples in (a page that silently lost its
# examples would otherwise pass).
PAGES_WITH_EXAMPLES = ["index.rst", "convolution_layer.rst", "lenet5.rst", "algorithms.rst"]
FIGURES = ["layer1_four_maps.png", "layer2_one_output_map.png", "layer2_six_kernels.png",
           "shared_vs_3d_kernel.png", "lenet5_c3_table.png", "lenet5_c3_map0.png"]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def code_blocks(text: str, path: str) -> list:
    """Python blocks that are not doctests: rst ``code-block:: python`` and Markdown ```python."""
    blocks = []
    if path.endswith(".rst"):
        for m in re.finditer(r"^([ \t]*)\.\. code-block:: python[ \t]*\n((?:\1[ \t]+:.*\n)*)\n"
                             r"((?:(?:\1[ \t]+.*)?\n)+)", text, re.M):
            body = m.group(3)
            indent = min(len(l) - len(l.lstrip()) for l in body.splitlines() if l.strip())
            blocks.append("\n".join(l[indent:] for l in body.splitlines()))
    else:
        blocks += re.findall(r"^```(?:python|py)[ \t]*\n(.*?)^```", text, re.M | re.S)
    return [b for b in blocks if not b.lstrip().startswith(">>>")]


def run_page(path: str) -> int:
    """Run a page's examples; returns how many there were.  Fails with the doctest report."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    name = os.path.basename(path)
    globs = {"__name__": f"docs_{os.path.splitext(name)[0]}"}
    n = 0
    for i, block in enumerate(code_blocks(text, path)):
        exec(compile(block, f"{name}[code-block {i}]", "exec"), globs)
        n += 1
    test = doctest.DocTestParser().get_doctest(text, globs, name, path, 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out = []
    runner.run(test, out=out.append)
    if runner.failures:
        pytest.fail(f"{runner.failures} of {runner.tries} examples failed in docs/{name}:\n"
                    + "".join(out), pytrace=False)
    return n + len(test.examples)


@pytest.mark.parametrize("path", PAGES, ids=[os.path.basename(p) for p in PAGES])
def test_page_examples_run(path):
    count = run_page(path)
    if os.path.basename(path) in PAGES_WITH_EXAMPLES:
        assert count >= 3, f"docs/{os.path.basename(path)} should hold runnable examples"


def test_expected_pages_exist():
    names = {os.path.basename(p) for p in PAGES}
    for page in PAGES_WITH_EXAMPLES + ["installation.rst", "api.rst"]:
        assert page in names


def test_code_block_extraction():
    rst = ("Text\n\n.. code-block:: python\n   :caption: c\n\n   a = 1\n\n   b = a + 1\n\n"
           "after\n\n.. code-block:: bash\n\n   rm -rf /\n")
    assert code_blocks(rst, "x.rst") == ["a = 1\n\nb = a + 1\n"]
    md = "x\n```python\nc = 3\n```\n```bash\nls\n```\n"
    assert code_blocks(md, "x.md") == ["c = 3\n"]


def test_lenet_docstring_examples():
    import fastconv.lenet

    result = doctest.testmod(fastconv.lenet, optionflags=FLAGS, verbose=False)
    assert result.attempted >= 5 and result.failed == 0


def test_make_figures_runs(tmp_path):
    mod = runpy.run_path(os.path.join(DOCS, "make_figures.py"))
    import matplotlib.pyplot as plt

    mod["main"]([str(tmp_path)])
    plt.close("all")
    assert sorted(os.listdir(tmp_path)) == sorted(FIGURES)
    committed = [os.path.join(DOCS, "_static", f) for f in FIGURES]
    assert all(os.path.exists(p) for p in committed), "run python docs/make_figures.py and commit"
    assert sum(os.path.getsize(p) for p in committed) < 300 * 1024


def test_make_figures_refuses_a_wrong_picture():
    mod = runpy.run_path(os.path.join(DOCS, "make_figures.py"))
    with pytest.raises(AssertionError, match="differ"):
        mod["check_equal"](np.zeros((2, 2)), np.full((2, 2), 1e-6), "test")


def _table_rows(text: str) -> list:
    """(configuration, algorithm, dtype) of each row of a generated error table."""
    rows = re.findall(r"^   \* - (.*)\n     - (.*)\n     - (.*)\n", text, re.M)
    return rows[1:]  # the header


def test_error_table_regenerates(tmp_path):
    out = tmp_path / "error_table.rst"
    mod = runpy.run_path(os.path.join(DOCS, "make_error_table.py"))
    mod["main"]([str(out)])
    fresh = _table_rows(out.read_text())
    assert len(fresh) >= 16
    algorithms = {r[1].split("``")[1] for r in fresh}
    assert algorithms == {"direct", "im2col", "winograd_f2x2_3x3", "winograd_f4x4_3x3", "fft"}
    with open(os.path.join(DOCS, "_generated", "error_table.rst")) as f:
        committed = _table_rows(f.read())
    assert committed == fresh, "the committed error table is stale: run python docs/make_error_table.py"


def test_error_table_rejects_an_error_above_its_bound(monkeypatch):
    mod = runpy.run_path(os.path.join(DOCS, "make_error_table.py"))
    main = mod["main"]
    monkeypatch.setitem(main.__globals__, "direct_bound", lambda *a: 0.0)
    monkeypatch.setitem(main.__globals__, "CONFIGS", mod["CONFIGS"][:1])
    with pytest.raises(AssertionError, match="above the stated bound"):
        main([os.devnull])


@pytest.mark.subprocess
def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           "-d", str(tmp_path / "doctrees"), DOCS, str(tmp_path / "html")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ["index", "installation", "convolution_layer", "lenet5", "algorithms", "api"]:
        assert (tmp_path / "html" / f"{page}.html").exists()
    api = (tmp_path / "html" / "api.html").read_text()
    for name in ["fastconv.conv2d", "lenet5_c3_table", "lenet5_c3_parameter_count"]:
        assert name in api
