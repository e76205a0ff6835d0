"""Code lines of minicnn's engine: what a student reads to understand the framework.

Counts lines that are code: not blank, not a comment, not part of a docstring
(module, class or function). The engine is the autograd package, the backend,
the functional operations, nn, optim and the NumPy reference kernels (the
readable specification) — the files DeZero's, minitorch's and needle's
engines are compared with.

    python benchmarks/count_lines.py            # this checkout
    python benchmarks/count_lines.py --root DIR # another checkout (e.g. a git worktree of an older commit)
"""
from __future__ import annotations

import argparse
import ast
import io
import pathlib
import tokenize

# The engine, old layout and new: whichever of these exists is counted.
ENGINE = ["minicnn/autograd", "minicnn/tensor.py", "minicnn/gradcheck.py", "minicnn/anomaly.py",
          "minicnn/backend.py", "minicnn/functional", "minicnn/nn", "minicnn/optim",
          "kernels/numpy_ref.py", "kernels/geometry.py", "kernels/contract.py"]
# Not the engine even where it sits inside nn/ (data-parallel training's SyncBatchNorm, before it moved).
NOT_ENGINE = {"minicnn/nn/sync_batchnorm.py"}


def code_lines(source: str) -> int:
    """Lines holding code tokens, minus the lines of docstrings."""
    docstring_lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                docstring_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - docstring_lines)


def engine_files(root: pathlib.Path):
    for entry in ENGINE:
        path = root / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else ([path] if path.exists() else [])
        yield from (f for f in files if f.relative_to(root).as_posix() not in NOT_ENGINE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(pathlib.Path(__file__).resolve().parents[1]))
    parser.add_argument("--per-file", action="store_true", help="list every file")
    args = parser.parse_args()
    root = pathlib.Path(args.root)
    total = 0
    for f in engine_files(root):
        n = code_lines(f.read_text())
        total += n
        if args.per_file:
            print(f"{n:6d}  {f.relative_to(root)}")
    print(f"engine code lines: {total}")
    top = sorted(p.name for p in (root / "minicnn").iterdir() if p.name != "__pycache__")
    print(f"top-level entries in minicnn/: {len(top)}  ({', '.join(top)})")


if __name__ == "__main__":
    main()
