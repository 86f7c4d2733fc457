"""Docstrings and comments under ``src/fastconv/`` explain the code; measurement history lives in docs.

A docstring or comment says what the code does, its contract and why it is
built so, in terms that stay true when the machine or the numbers change.
How a rule was fitted, on which data sets, and what a particular run timed
belongs in ``docs/`` (``docs/cpu_auto.md``, ``docs/cuda_auto.md``,
``docs/benchmarks.md``), next to the results files it comes from.

Only docstrings (found with :mod:`ast`) and comments (found with
:mod:`tokenize`) are scanned, so string literals in code -- error messages,
report labels, format strings -- are not.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src", "fastconv")

# Each pattern marks one kind of measurement history.  A unit alone is not history
# (the benchmark modules say that they report GFLOP/s); a number in that unit is.
PATTERNS = {
    "date": re.compile(r"\b20\d\d-\d\d-\d\d\b"),
    "held-out set": re.compile(r"held-?out", re.I),
    "FLOP rate": re.compile(r"\d ?[GT]FLOP/s", re.I),
    "percent of peak": re.compile(r"\d ?% of (the |its )?([\w-]+ )?peak\b", re.I),
    "speed-up": re.compile(r"\b\d+(\.\d+)? ?(x|×|%) (faster|slower)\b", re.I),
    "'measured'": re.compile(r"\bmeasured\b", re.I),
    "timing": re.compile(r"\b\d+(\.\d+)? ?(ms|us|µs)\b"),
    "hit count": re.compile(r"\b\d+/\d+ (fastest|within)\b", re.I),
}


def source_files() -> list:
    out = []
    for dirpath, dirnames, filenames in os.walk(SRC):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return out


def docstrings(source: str):
    """(first line, text) of every module, class and function docstring."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                yield body[0].value.lineno, body[0].value.value


def comments(source: str):
    """(line, text) of every ``#`` comment."""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string


def hits_in(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        source = f.read()
    rel = os.path.relpath(path, ROOT)
    hits = []
    for first_line, text in list(docstrings(source)) + list(comments(source)):
        for kind, pattern in PATTERNS.items():
            for m in pattern.finditer(text):
                line = first_line + text.count("\n", 0, m.start())
                hits.append((rel, line, kind, m.group(0)))
    return hits


def test_patterns_catch_history_and_spare_explanations():
    history = ["fitted 2026-11-30 on heldout4", "held-out set", "41 GFLOP/s", "200-225 GFLOP/s",
               "1.2 TFLOP/s", "91% of peak", "77% of the FMA peak", "1.8x faster", "3x slower",
               "4-19% faster", "Measured on ResNet-50", "took 10.4 ms", "9 us", "250 µs",
               "8/10 fastest", "9/10 within 5%"]
    for text in history:
        assert any(p.search(text) for p in PATTERNS.values()), text
    timeless = ["F(4x4) needs 44% fewer multiplies than F(2x2)", "a 16x16 tile",
                "at most 32 registers", "the 2x2 output tile", "measure=True times the candidates",
                "a 3x3 kernel, stride 2", "the error grows 4x with the tile", "bytes",
                "reports GFLOP/s and the ratio to PyTorch", "median ms, TFLOP/s", "the FMA peak",
                "(the stored timings of 18 layers)", "2.25x fewer multiplies"]
    for text in timeless:
        assert not any(p.search(text) for p in PATTERNS.values()), text


def test_no_measurement_history_in_docstrings_or_comments():
    files = source_files()
    assert len(files) > 20, files
    hits = [h for path in files for h in hits_in(path)]
    report = "\n".join(f"{rel}:{line}: {kind}: {text!r}" for rel, line, kind, text in sorted(hits))
    assert not hits, (f"{len(hits)} pieces of measurement history in docstrings or comments "
                      f"(move them to docs/, say what the code does and why):\n{report}")
