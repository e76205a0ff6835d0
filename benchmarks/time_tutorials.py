"""How long each tutorial takes to run top to bottom: the minutes column of the course map.

Each notebook is executed once, in a fresh kernel, in tutorials/ (as a student
runs it), and its wall time is written to ``tutorials/course_times.json``:

    {"machine": "...", "cores": 2, "data_dir": "...", "measured": "2026-12-06T04:40Z",
     "seconds": {"00_tour": 61.2, ...}, "load_average": {"00_tour": 0.4, ...}, "failed": {"11_transfer_learning": "the error"}}

``tutorials/course.toml`` (the course map) holds what a lecturer writes: the
titles, objectives and prerequisites; ``minicnn.course.syllabus`` reads both files
to build the syllabus page, the dependency picture and the README table.

Usage (on a quiet machine: the times are the lecturer's planning numbers)::

    MINICNN_DATA_DIR=~/data python benchmarks/time_tutorials.py            # every notebook
    python benchmarks/time_tutorials.py 02 05 --save-executed /tmp/run     # two, keep the outputs

A notebook measured again replaces only its own entry. ``--save-executed DIR``
also writes each executed notebook (with its outputs) to DIR, to read the numbers
its prose quotes without running it a second time.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import sys
import time

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
TIMES = TUTORIALS / "course_times.json"


def run_one(path, timeout):
    """Execute the notebook at ``path`` in a fresh kernel; return (seconds, executed notebook, error or None)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as e:                      # a failing cell: record it, keep timing the others
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()     # without the traceback's terminal colours
        error = f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"
    return time.perf_counter() - start, nb, error


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("numbers", nargs="*", help="tutorial numbers to time (default: all), e.g. 02 05")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    parser.add_argument("--save-executed", metavar="DIR", help="also write each executed notebook here")
    parser.add_argument("--out", default=str(TIMES), help=f"the JSON file to update (default {TIMES})")
    args = parser.parse_args(argv)

    paths = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
    if args.numbers:
        unknown = set(args.numbers) - {p.name[:2] for p in paths}
        if unknown:
            parser.error(f"no tutorial numbered {sorted(unknown)}; expected two digits from "
                         f"{paths[0].name[:2]} to {paths[-1].name[:2]}")
        paths = [p for p in paths if p.name[:2] in args.numbers]

    out = pathlib.Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {}
    record.setdefault("seconds", {})
    record.setdefault("failed", {})
    os.environ.setdefault("MPLBACKEND", "Agg")
    record.setdefault("load_average", {})
    for path in paths:
        load = os.getloadavg()[0]                # how busy the machine was: times under load are inflated
        seconds, nb, error = run_one(path, args.timeout)
        name = path.stem
        print(f"{name:32s} {seconds:7.1f} s" + (f"   FAILED: {error}" if error else ""), flush=True)
        if error:
            record["failed"][name] = error
            record["seconds"].pop(name, None)
        else:
            record["seconds"][name] = round(seconds, 1)
            record["load_average"][name] = round(load, 2)
            record["failed"].pop(name, None)
        if args.save_executed:
            pathlib.Path(args.save_executed).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, os.path.join(args.save_executed, path.name))
        record.update(machine=f"{platform.machine()} {platform.processor() or platform.system()}",
                      cores=os.cpu_count(), data_dir=os.environ.get("MINICNN_DATA_DIR"),
                      measured=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                      python=sys.version.split()[0])
        record["seconds"] = dict(sorted(record["seconds"].items()))
        out.write_text(json.dumps(record, indent=1) + "\n")   # after each notebook: a stopped run keeps what it measured
    return 1 if record["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
