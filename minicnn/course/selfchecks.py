"""The proof that the tutorials' self-checks can fail: each one run against a deliberately broken subject.

An exercise's check is proven by running it on the stub (:func:`minicnn.course.prove_checks`).
A *self-check* — an ``assert`` in the body of a notebook, checking what the notebook just
computed — has no stub, so ``tutorials/self_checks.toml`` says how to break its subject::

    [[breakage]]
    notebook = "15_interpretability.ipynb"
    check = "Self-check 5"                 # text found in exactly one code cell: the self-check
    subject = "PGD does nothing"           # what is broken, in words
    cell = "adv6 = attacks.pgd("           # text of the cell to break (default: the check cell)
    replace = "attacks.pgd(model, xs, y6, 0.2, steps=10, seed=0)"
    by = "xs"

Cells are found by their text, not their number, so the list survives cells added above them.
:func:`proof_notebook` builds, for one notebook, the code cells in order, and at each
registered check: the cells from the broken one to the check with the breakage applied (the
check **must fail** with an ``AssertionError``, or the ``error`` the entry names, such as
``GradcheckError`` for ``assert mc.gradcheck(...)``), then the same cells as written (it must pass
again, which also restores the state for what follows; ``rerun_from`` starts both runs at an earlier
cell, when the check's cell changes what that cell set up). ``skip`` lists text of cells the checks
do not need (slow sweeps), left out to keep the proof short. :func:`prove_self_checks` runs it in
a fresh kernel; ``tests/test_self_checks.py`` runs every notebook of the list.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

try:
    import tomllib                      # Python 3.11+
except ModuleNotFoundError:             # pragma: no cover - older Pythons
    import tomli as tomllib

from .notebooks import CourseError, default_tutorials_dir, exercise_section, read_notebook, source

BREAKAGES_FILE = "self_checks.toml"


@dataclass
class Breakage:
    notebook: str
    check: str
    subject: str
    replace: str
    by: str
    cell: str = ""                      # the cell to break; "" = the check cell itself
    skip: list = field(default_factory=list)
    error: str = "AssertionError"       # what the check raises on the broken subject (mc.gradcheck: GradcheckError)
    rerun_from: str = ""                # the first cell to run again (default: the broken one), when the
                                        # check's cell changes state an earlier cell set up (prune.remove)


def load_breakages(tutorials_dir=None) -> list:
    """The entries of ``self_checks.toml`` as :class:`Breakage` objects."""
    path = os.path.join(tutorials_dir or default_tutorials_dir(), BREAKAGES_FILE)
    with open(path, "rb") as f:
        data = tomllib.load(f)
    out = []
    for i, entry in enumerate(data.get("breakage", [])):
        try:
            out.append(Breakage(**entry))
        except TypeError as e:
            raise CourseError(f"{path}: breakage {i}: {e}") from None
    return out


def self_check_cells(nb, name="notebook") -> list:
    """Indices of the notebook's self-checks: code cells with an ``assert`` statement before its
    "## Exercises" section (the exercises' check cells are proven against their stubs instead)."""
    end = exercise_section(nb, name).section
    end = len(nb["cells"]) if end is None else end
    return [i for i, c in enumerate(nb["cells"][:end]) if c.get("cell_type") == "code"
            and any(line.lstrip().startswith("assert ") for line in source(c).splitlines())]


def unproven_self_checks(tutorials_dir=None) -> dict:
    """``{notebook: [cell indices]}`` of the self-checks no breakage in ``self_checks.toml`` names."""
    folder = tutorials_dir or default_tutorials_dir()
    breakages = load_breakages(folder)
    out = {}
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".ipynb")):
        nb = read_notebook(os.path.join(folder, name))
        checks = [b.check for b in breakages if b.notebook == name]
        missing = [i for i in self_check_cells(nb, name) if not any(text in source(nb["cells"][i])
                                                                      for text in checks)]
        if missing:
            out[name] = missing
    return out


def find_code_cell(nb, text, name="notebook") -> int:
    """The index of the one code cell whose source contains ``text``."""
    hits = [i for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code" and text in source(c)]
    if len(hits) != 1:
        raise CourseError(f"{name}: expected exactly one code cell containing {text!r}, found {len(hits)} "
                          f"({hits})")
    return hits[0]


def broken_source(cell_text, breakage, name="notebook") -> str:
    if cell_text.count(breakage.replace) != 1:
        raise CourseError(f"{name}: breakage of {breakage.check!r}: the text to replace, {breakage.replace!r}, "
                          f"occurs {cell_text.count(breakage.replace)} times in its cell (expected once)")
    return cell_text.replace(breakage.replace, breakage.by)


def proof_notebook(nb, breakages, name="notebook") -> dict:
    """The cells :func:`prove_self_checks` runs; each cell's ``metadata["selfcheck"]`` says its role:
    ``run`` (must not fail), ``broken`` (the broken subject; must not fail), ``check on broken``
    (must raise AssertionError) or ``check`` (must pass)."""
    checks = {}
    for b in breakages:
        c = find_code_cell(nb, b.check, name)
        first = find_code_cell(nb, b.cell, name) if b.cell else c
        start = find_code_cell(nb, b.rerun_from, name) if b.rerun_from else first
        if not start <= first <= c:
            raise CourseError(f"{name}: breakage of {b.check!r}: expected rerun_from <= the broken cell <= the "
                              f"check, got cells {start}, {first}, {c}")
        checks.setdefault(c, []).append((start, first, b))   # a check may be proven against several breakages
    skipped = {find_code_cell(nb, s, name) for b in breakages for s in b.skip}
    cells = []

    def add(index, role, text=None, check=None, expected=None):
        c = json.loads(json.dumps(nb["cells"][index]))
        c["outputs"], c["execution_count"] = [], None
        if text is not None:
            c["source"] = text
        c.setdefault("metadata", {})["selfcheck"] = {"role": role, "cell": index, "check": check,
                                                     "error": expected}
        c["id"] = f"selfcheck-{len(cells)}"          # cells run twice here; ids must stay unique
        cells.append(c)

    last = max(checks) if checks else -1
    pending = []                                     # code cells run since the last check, in order
    for i in range(last + 1):
        cell = nb["cells"][i]
        if cell.get("cell_type") != "code" or i in skipped:
            continue
        if i not in checks:
            add(i, "run")
            pending.append(i)
            continue
        for start, first, b in checks[i]:
            span = [j for j in pending if j >= start] + [i]
            for j in span:                           # the broken variant ...
                text = source(nb["cells"][j])
                if j == first:
                    text = broken_source(text, b, name)
                add(j, "check on broken" if j == i else "broken", text, b.check, b.error)
            for j in span:                           # ... then as written: passes, and restores the state
                add(j, "check" if j == i else "run", None, b.check)
        pending.append(i)
    out = {k: v for k, v in nb.items() if k != "cells"}
    out["cells"] = cells
    return out


def error_of(cell):
    """``(name, first line of the message)`` of the error a run cell raised, or None."""
    for o in cell.get("outputs", []):
        if o.get("output_type") == "error":
            value = str(o.get("evalue", "")).strip().splitlines()
            return o.get("ename"), value[0] if value else ""
    return None


def prove_self_checks(path, breakages, timeout=600, kernel_name="python3"):
    """Run :func:`proof_notebook` in a fresh kernel in the notebook's folder; return (problems, seconds).

    A problem: a cell that must not fail failed, a check passed on its broken subject (or
    failed with something other than an AssertionError), or failed as written.
    """
    import nbformat                                  # installed with minicnn[dev]
    from nbclient import NotebookClient

    name = os.path.basename(path)
    proof = nbformat.reads(json.dumps(proof_notebook(read_notebook(path), breakages, name)), as_version=4)
    t0 = time.perf_counter()
    NotebookClient(proof, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                   resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}).execute()
    seconds = time.perf_counter() - t0
    problems = []
    for cell in proof.cells:
        meta = cell.metadata["selfcheck"]
        error = error_of(cell)
        at = f"{name}, cell {meta['cell']}"
        if meta["role"] == "check on broken":
            if error is None:
                problems.append(f"{at}: {meta['check']!r} passes on its broken subject")
            elif error[0] != meta["error"]:
                problems.append(f"{at}: {meta['check']!r} on its broken subject raised {error[0]}: {error[1]} "
                                f"(expected its check to fail with {meta['error']})")
        elif error is not None:
            problems.append(f"{at} ({meta['role']}{'' if meta['check'] is None else ' for ' + repr(meta['check'])}) "
                            f"failed: {error[0]}: {error[1]}")
    return problems, seconds
