"""The web site, for the instructor (with solutions) or for students (``minicnn course build-site --student``).

The instructor site is the repository's Sphinx build (``docs/conf.py``: the repository is the
source folder, myst-nb executes the tutorials). The student site is the same build from a
*staged* copy of the sources (:func:`stage_student_sources`): the repository as it is, except
that ``tutorials/`` holds the student notebooks — solution regions replaced by stubs, exactly
as in the student edition.

A student notebook cannot be executed (its stubs raise), so it carries the outputs of the
*instructor's* run instead, with everything from the ``## Exercises`` heading on cleared (an
exercise's output, or its check's, could show the answer). Those outputs come from myst-nb's
execution cache (``docs/_build/.jupyter_cache``, filled by an instructor build in ``cache``
mode) when it holds the notebook's current code, else from running it here (nbclient), and the
student build itself executes nothing. ``--execute off`` stages the notebooks without outputs
(prose only, fast).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from .notebooks import (CourseError, default_tutorials_dir, exercise_section, notebook_paths, read_notebook,
                        student_notebook, write_notebook)


def repository_root() -> str:
    return os.path.dirname(default_tutorials_dir())


def executed(path, cache_dir=None, timeout=600) -> dict:
    """The notebook at ``path`` with its outputs: from myst-nb's cache when it matches the code, else run."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    if cache_dir and os.path.isdir(cache_dir):
        from jupyter_cache import get_cache
        try:
            _, merged = get_cache(cache_dir).merge_match_into_notebook(nb)
            return json.loads(nbformat.writes(merged))
        except KeyError:                                  # not cached, or the code changed since
            pass
    from nbclient import NotebookClient
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}).execute()
    return json.loads(nbformat.writes(nb))


def student_site_notebook(nb, name="notebook", outputs_from=None) -> dict:
    """The student notebook of ``nb``, with the outputs of ``outputs_from`` (the same notebook,
    executed) in every code cell before the Exercises section; none from the section on."""
    course = exercise_section(nb, name)
    student = student_notebook(nb, name)
    if outputs_from is not None:
        end = course.section if course.section is not None else len(nb["cells"])
        for i, (cell, run) in enumerate(zip(student["cells"], outputs_from["cells"])):
            if i < end and cell.get("cell_type") == "code" and run.get("cell_type") == "code":
                cell["outputs"], cell["execution_count"] = run.get("outputs", []), run.get("execution_count")
    return student


def stage_student_sources(stage, root=None, execute=True, cache_dir=None, log=print) -> str:
    """Write the student site's source folder into ``stage``: a copy of the repository (a few MB:
    no ``.git``, no build folders) whose ``tutorials/`` holds the student notebooks. Returns ``stage``.

    A copy, not links: Sphinx resolves a linked page to where it really lives, and its links
    to the tutorials would lead back to the instructor's notebooks."""
    root = os.path.abspath(root or repository_root())
    tutorials = os.path.join(root, "tutorials")
    paths = notebook_paths(tutorials)
    shutil.copytree(root, stage, dirs_exist_ok=True, symlinks=True,
                    ignore=shutil.ignore_patterns(".*", "_build", "__pycache__", "*.egg-info", "*.ipynb"))
    for path in paths:
        name = os.path.basename(path)
        run = executed(path, cache_dir) if execute else None
        if execute:
            log(f"  {name}: outputs ready")
        write_notebook(student_site_notebook(read_notebook(path), name, run), os.path.join(stage, "tutorials", name))
    return stage


def build_site(out_dir, student=False, execute="cache", root=None, log=print) -> int:
    """Build the site into ``out_dir`` (the instructor's, or with ``student`` the students')."""
    root = os.path.abspath(root or repository_root())
    if execute not in ("cache", "force", "off"):
        raise CourseError(f"execute: expected cache, force or off, got {execute!r}")
    env = dict(os.environ, MINICNN_DOCS_EXECUTE=execute)
    with tempfile.TemporaryDirectory(prefix="minicnn-site-") as stage:
        source = root
        if student:
            log(f"staging the student sources in {stage}")
            cache = os.path.join(root, "docs", "_build", ".jupyter_cache")
            source = stage_student_sources(stage, root, execute != "off", cache if execute == "cache" else None, log)
            env.update(MINICNN_DOCS_EXECUTE="off", MINICNN_SITE_EDITION="student")   # outputs are in the notebooks
        cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-c", os.path.join(source, "docs"),
               "-b", "html", source, out_dir, "-d", os.path.join(out_dir, ".doctrees")]
        returncode = subprocess.run(cmd, cwd=root, env=env).returncode
    if returncode == 0:
        log(f"wrote the {'student' if student else 'instructor'} site to {out_dir} "
            f"(open {os.path.join(out_dir, 'index.html')})")
    return returncode
