"""Slides from the tutorials: the cells' ``slideshow`` metadata, set by rule, and the reveal.js decks.

Jupyter marks a cell's role in a slide show with ``metadata.slideshow.slide_type``
(``"slide"``, ``"subslide"``, ``"fragment"``, ``"skip"``, ``"notes"`` or ``"-"``: go on
with the current slide); ``jupyter nbconvert --to slides`` turns the notebook
into a reveal.js page. :func:`slide_type` decides it from the cell alone:

* a markdown cell with a ``#`` or ``##`` heading starts a **slide** (a heading in the middle of
  a cell takes the prose above it along: a cell is one unit);
* one with only ``###`` headings starts a **sub-slide** (reveal.js: downwards);
* a solution cell of an exercise (``### BEGIN SOLUTION``) is **skipped**: the
  slides show the exercise and its check, not the answer;
* every other cell goes on with the current slide (no metadata: Jupyter's default).

:func:`apply` writes that metadata into the notebooks and changes nothing else
(the JSON keeps its indentation, key order and escaping, so the diff is the
metadata alone); it is rerunnable, so it can be reapplied after cells were
added or moved::

    python -m minicnn.course.slides              # set the metadata of every tutorial
    python -m minicnn.course.slides --check      # exit 1 if a notebook's metadata is out of date
    python -m minicnn.course.slides --build OUT  # also write OUT/NN_name.slides.html (no execution)

The site build (``docs/conf.py``) writes the decks of the stored notebooks
(without outputs: nothing is executed) to ``slides/`` of the site.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from ..io import write_text
from .notebooks import BEGIN, default_tutorials_dir, notebook_paths, read_notebook, source

HEADING = re.compile(r"^(#{1,3})\s", re.M)


def slide_type(cell):
    """``"slide"``, ``"subslide"`` or ``"skip"`` for ``cell`` by the rules above, or None (go on)."""
    text = source(cell)
    if cell.get("cell_type") == "markdown":
        prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)     # a "# comment" in a code block is no heading
        levels = [len(m.group(1)) for m in HEADING.finditer(prose)]
        if any(level <= 2 for level in levels):
            return "slide"             # a section starts here (mid-cell too: the prose above it comes along)
        return "subslide" if levels else None
    if cell.get("cell_type") == "code" and any(line.strip() == BEGIN for line in text.splitlines()):
        return "skip"
    return None


def with_slide_metadata(nb) -> bool:
    """Set every cell's ``slideshow`` metadata of ``nb`` in place; True if anything changed."""
    changed = False
    for cell in nb["cells"]:
        wanted = slide_type(cell)
        meta = cell.setdefault("metadata", {})
        current = meta.get("slideshow", {}).get("slide_type")
        if wanted == current:
            continue
        changed = True
        if wanted is None:
            meta.pop("slideshow", None)
        else:
            meta["slideshow"] = {"slide_type": wanted}
    return changed


def dumps_like(nb, original) -> str:
    """``nb`` as JSON in the style of the text ``original``: the indentation, key order, escaping and
    final newline with which ``original`` reads back unchanged (Jupyter's own style if none does)."""
    before = json.loads(original)
    ending = original[len(original.rstrip("\n")):]
    for indent in (1, 2, 4):
        for ascii_only in (False, True):
            for sort in (True, False):
                if json.dumps(before, indent=indent, ensure_ascii=ascii_only, sort_keys=sort) + ending == original:
                    return json.dumps(nb, indent=indent, ensure_ascii=ascii_only, sort_keys=sort) + ending
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def apply(tutorials_dir=None, check=False) -> list:
    """Set the slide metadata of every notebook of ``tutorials_dir``; return the paths that changed
    (with ``check``, the paths that would change, and nothing is written)."""
    changed = []
    for path in notebook_paths(tutorials_dir or default_tutorials_dir()):
        nb = read_notebook(path)
        if with_slide_metadata(nb):
            changed.append(path)
            if not check:
                with open(path, encoding="utf-8") as f:
                    original = f.read()
                write_text(path, dumps_like(nb, original))
    return changed


def build(out_dir, tutorials_dir=None) -> list:
    """Write each notebook as reveal.js slides, ``out_dir/NN_name.slides.html``, without executing it."""
    import nbformat                                  # installed with minicnn[dev] (nbconvert)
    from nbconvert import SlidesExporter
    os.makedirs(out_dir, exist_ok=True)
    exporter = SlidesExporter()
    written = []
    for path in notebook_paths(tutorials_dir or default_tutorials_dir()):
        body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
        out = os.path.join(out_dir, os.path.basename(path)[:-len(".ipynb")] + ".slides.html")
        write_text(out, body)
        written.append(out)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description="set the tutorials' slide metadata; build the slides")
    parser.add_argument("--tutorials", default=None, help="the tutorials folder (default: the repository's)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if metadata is out of date")
    parser.add_argument("--build", metavar="OUT", default=None, help="also write the slides to OUT")
    args = parser.parse_args(argv)
    changed = apply(args.tutorials, check=args.check)
    if args.check and changed:
        print("slide metadata out of date (run python -m minicnn.course.slides): " + ", ".join(changed),
              file=sys.stderr)
        return 1
    if args.build:
        print("\n".join(build(args.build, args.tutorials)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
