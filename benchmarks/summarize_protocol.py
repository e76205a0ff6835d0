"""Summarize several bench_protocol.py --json runs: the median and spread (min-max) over runs.

    python benchmarks/summarize_protocol.py run1.json run2.json run3.json

Each run's figure is already the median of its per-round ratios; this prints,
per configuration and contender, the median of those run figures with the
smallest and largest beside it, as a Markdown table (what benchmarks/README.md shows).
"""
from __future__ import annotations

import json
import statistics
import sys


def _fmt(values, fmt):
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def summarize(paths):
    runs = [json.load(open(p)) for p in paths]
    contenders = [c for c in runs[0]["steady_state"][0]["ms_per_step"] if c != "torch"]
    lines = ["| measurement | " + " | ".join(f"{c}: time / PyTorch's" for c in contenders)
             + " | " + " | ".join(f"{c} ms" for c in contenders) + " | PyTorch ms | peak RSS MiB (" + ", ".join(contenders + ["torch"]) + ") |",
             "|---|" + "---:|" * (2 * len(contenders) + 2)]
    for i, row in enumerate(runs[0]["steady_state"]):
        rows = [r["steady_state"][i] for r in runs]
        name = f"{'training step' if row['mode'] == 'train' else 'inference'}, batch {row['batch']}"
        ratios = [_fmt([r["ratio_vs_torch"][c]["median"] for r in rows], "{:.2f}×") for c in contenders]
        times = [_fmt([r["ms_per_step"][c] for r in rows], "{:.1f}") for c in contenders + ["torch"]]
        rss = ", ".join(f"{statistics.median(r['peak_rss_mib'][c] for r in rows):.0f}" for c in contenders + ["torch"])
        lines.append(f"| {name} | " + " | ".join(ratios) + " | " + " | ".join(times) + f" | {rss} |")
    e2e = [r["end_to_end"] for r in runs if r.get("end_to_end")]
    if e2e:
        mine = [e["best_s"]["minicnn train"] for e in e2e]
        theirs = [e["best_s"]["pytorch script"] for e in e2e]
        lines.append(f"| one epoch end to end (`minicnn train` vs the PyTorch script, wall s, best of "
                     f"each run's tries) | {_fmt([e['ratio'] for e in e2e], '{:.2f}×')} | | "
                     f"{_fmt(mine, '{:.1f}')} | | {_fmt(theirs, '{:.1f}')} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1:]))
