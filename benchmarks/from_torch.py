"""A PyTorch program, run as it is under PyTorch and through ``minicnn from-torch``: time and output.

The program is yours (this repository ships none copied from elsewhere): for
example ``mnist/main.py`` of a checkout of pytorch/examples. PyTorch's side
needs a Python whose environment has torch (and torchvision, if the program
uses it); minicnn's side runs in this interpreter. The two run one after the
other, each a whole process, and the last ``--tail`` lines of each output are
kept (the program's own accuracy lines).

    python benchmarks/from_torch.py ~/examples/mnist/main.py --torch-python ~/tv/bin/python \\
        --cwd /tmp/run --json benchmarks/results/from_torch_mnist.json -- --epochs 1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def run(argv, cwd, env):
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, p


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("program")
    ap.add_argument("--torch-python", default=sys.executable, help="a Python with torch (and torchvision)")
    ap.add_argument("--cwd", default=".", help="where both run (the program's relative data paths)")
    ap.add_argument("--backend", default="numba", help="minicnn's backend (MINICNN_BACKEND)")
    ap.add_argument("--tail", type=int, default=4)
    ap.add_argument("--json", default=None)
    argv = sys.argv[1:] if argv is None else list(argv)
    program_args = argv[argv.index("--") + 1:] if "--" in argv else []      # the program's own arguments
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.args = program_args
    program = os.path.abspath(args.program)
    env = dict(os.environ, MPLBACKEND="Agg")
    results = {}
    for name, command in (("pytorch", [args.torch_python, program, *args.args]),
                          ("minicnn", [sys.executable, "-m", "minicnn.cli", "from-torch", program, "--", *args.args])):
        wall, p = run(command, args.cwd, dict(env, MINICNN_BACKEND=args.backend))
        tail = [line for line in p.stdout.splitlines() if line.strip()][-args.tail:]
        results[name] = {"wall_s": round(wall, 1), "returncode": p.returncode, "last_lines": tail}
        print(f"{name}: {wall:.1f} s, exit {p.returncode}", *("  " + line for line in tail), sep="\n", flush=True)
        if p.returncode != 0:
            print(p.stderr[-3000:], file=sys.stderr)
    if args.json:
        from minicnn.io import write_json
        write_json(args.json, {"program": args.program, "args": args.args, "date": time.strftime("%Y-%m-%d %H:%M"),
                               "results": results})
    return 0 if all(r["returncode"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
