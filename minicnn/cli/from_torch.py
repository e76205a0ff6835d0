"""``minicnn from-torch PROGRAM.py [ARGS ...]``: run a PyTorch program on minicnn.

The promise of minicnn's API is that a PyTorch teaching program runs after
rewriting only its import lines. This command does exactly that rewrite — by
the table below, nothing else in the program changes — and runs the result
as ``__main__`` with ``ARGS`` as its ``sys.argv[1:]``::

    minicnn from-torch main.py --epochs 1          # pytorch/examples' MNIST, on minicnn
    minicnn from-torch main.py --show              # print the rewritten program instead

The table (README, "From PyTorch")::

    torch                   ->  minicnn
    torch.nn                ->  minicnn.nn
    torch.nn.functional     ->  minicnn.nn.functional   (the same module as minicnn.functional)
    torch.optim             ->  minicnn.optim           (lr_scheduler included)
    torch.utils.data        ->  minicnn.utils.data
    torchvision             ->  minicnn.vision

An import the table does not cover (``torch.distributed``, ``torchaudio``) is
left as it is, and the program fails there with Python's own ImportError if
minicnn has no such module — the rewrite never guesses.
"""
from __future__ import annotations

import re
import runpy
import sys

#: PyTorch's module paths and minicnn's, longest first (a prefix must not win over a longer match).
IMPORT_TABLE = (
    ("torch.nn.functional", "minicnn.nn.functional"),
    ("torch.utils.data", "minicnn.utils.data"),
    ("torch.optim", "minicnn.optim"),
    ("torch.nn", "minicnn.nn"),
    ("torchvision", "minicnn.vision"),
    ("torch", "minicnn"),
)

_IMPORT = re.compile(r"^(\s*)(import|from)\s+(.*)$")


def _module(path):
    """``path`` by the table: the longest PyTorch prefix replaced, or None if it is not PyTorch's."""
    for old, new in IMPORT_TABLE:
        if path == old or path.startswith(old + "."):
            return new + path[len(old):]
    return None


def _rewrite_import_item(item):
    """One item of ``import a.b as c, d``: ``"torch.nn as nn"`` -> ``"minicnn.nn as nn"``."""
    path, _, alias = (part.strip() for part in item.partition(" as "))
    new = _module(path)
    if new is None:
        return item.strip()
    if alias:
        return f"{new} as {alias}"
    top = path.split(".")[0]
    if top == path:                       # "import torch" binds torch: to minicnn
        return f"{new} as {top}"
    # "import torch.nn" binds torch (and makes torch.nn reachable through it)
    return f"{new}, {_module(top)} as {top}"


def rewrite_imports(source: str) -> str:
    """``source`` with the module paths of its import lines rewritten by :data:`IMPORT_TABLE`.

    Only lines that start (after indentation) with ``import`` or ``from`` change.
    ``import torch`` becomes ``import minicnn as torch``, so that the program's
    ``torch.zeros(...)`` finds minicnn's; ``import torch.nn as nn`` becomes
    ``import minicnn.nn as nn``; ``from torch import nn`` becomes ``from minicnn import nn``.
    """
    lines = []
    for line in source.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        end = line[len(body):]
        code, hash_, comment = body.partition("#")
        m = _IMPORT.match(code.rstrip())
        if m is None:
            lines.append(line)
            continue
        indent, keyword, rest = m.groups()
        tail = (" " * (len(code) - len(code.rstrip())) + hash_ + comment) if hash_ else ""
        if keyword == "from":
            path, sep, names = rest.partition(" import ")
            new = _module(path.strip())
            rewritten = f"{indent}from {new} import {names.strip()}" if new and sep else None
        else:
            items = [_rewrite_import_item(item) for item in rest.split(",")]
            rewritten = f"{indent}import {', '.join(items)}"
        if rewritten is None or rewritten == f"{indent}{keyword} {rest}":
            lines.append(line)
        else:
            lines.append(rewritten + tail + end)
    return "".join(lines)


def add_parser(subparsers):
    p = subparsers.add_parser("from-torch", help="run a PyTorch program on minicnn (its import lines rewritten)")
    p.add_argument("program", help="a PyTorch program (.py)")
    p.add_argument("args", nargs="*", help="the program's own arguments (put them after --)")
    p.add_argument("--show", action="store_true", help="print the rewritten program instead of running it")
    p.set_defaults(func=cmd_from_torch)


def cmd_from_torch(args):
    from .commands import CLIError
    try:
        with open(args.program, encoding="utf-8") as f:
            source = f.read()
    except OSError as e:
        raise CLIError(f"cannot read the program {args.program!r}: {e.strerror or e}") from None
    program = rewrite_imports(source)
    if args.show:
        print(program, end="")
        return 0
    return run_program(program, args.program, args.args)


def run_program(program: str, path: str, argv=()):
    """Run ``program`` (source text) as ``__main__`` from ``path``, with ``argv`` as its arguments."""
    import os
    import tempfile
    folder = os.path.dirname(os.path.abspath(path))
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    with tempfile.TemporaryDirectory() as tmp:
        rewritten = os.path.join(tmp, os.path.basename(path))
        with open(rewritten, "w", encoding="utf-8") as f:
            f.write(program)
        sys.argv = [path, *argv]
        sys.path.insert(0, folder)          # the program's own modules, as `python PROGRAM.py` would see them
        try:
            runpy.run_path(rewritten, run_name="__main__")
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.argv, sys.path[:] = saved_argv, saved_path
    return 0
