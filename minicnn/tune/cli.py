"""``minicnn lr-find`` and ``minicnn tune``: the command-line side of :mod:`minicnn.tune`.

For example::

    minicnn lr-find --optimizer sgd                  # the range test; prints suggestions, writes the plot
    minicnn tune --trials 20 --sampler tpe --epochs 3 \\
        --space lr=1e-4:1e-1:log --space batch_size=32,64,128 --space optimizer=sgd,momentum,adam
    minicnn train --config runs/tune/best.json       # retrain the best trial exactly

Every ``minicnn train`` option is accepted and is the fixed part of each
trial; ``--space`` options replace some of them by sampled values. A trial is
one ordinary ``prepare_run`` + ``run_fit``; a :class:`~minicnn.train.Callback`
reports each epoch's **validation** accuracy to Optuna (which prunes from it)
and the trial's value is its best validation accuracy. The test set is never
looked at.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import sys
import time

from ..io import atomic_write, write_json
from ..train.loop import Callback

INSTALL_HINT = ('minicnn tune needs Optuna, which is not installed: pip install "minicnn[tune]" '
                "(or: pip install optuna)")


def _import_optuna():
    from ..cli.commands import CLIError
    try:
        import optuna
    except ImportError:
        raise CLIError(INSTALL_HINT) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def train_options():
    """``{dest: argparse action}`` of every ``minicnn train`` option."""
    from ..cli.commands import add_train_arguments
    p = add_train_arguments(argparse.ArgumentParser(add_help=False))
    return {a.dest: a for a in p._actions if a.dest != "help"}


# -----------------------------------------------------------------------------
# One trial
# -----------------------------------------------------------------------------
class ReportToOptuna(Callback):
    """After each epoch: report the validation accuracy; raise TrialPruned when the pruner says so.

    Never after the last epoch: the trial has finished by then, and pruning it
    would throw its result away without saving any time.
    """

    def __init__(self, trial, epochs):
        self.trial, self.epochs = trial, epochs
        self.history = []

    def on_epoch_end(self, epoch, model, logs):
        import optuna
        acc = logs.get("val_acc")
        self.history.append(acc)
        self.trial.set_user_attr("val_acc_history", list(self.history))
        self.trial.set_user_attr("epochs_run", epoch + 1)
        self.trial.report(acc, epoch)
        if epoch + 1 < self.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch + 1}: val accuracy {acc:.4f} below the median")


def trial_args(base, params, out):
    """The train options of one trial: the fixed options, with the sampled ``params`` put in."""
    args = copy.copy(base)
    for k, v in params.items():
        setattr(args, k, v)
    args.out, args.resume, args.config = out, None, None
    return args


def options_dict(args):
    """The train options of ``args`` as a JSON-able dict (what ``--config`` reads)."""
    dests = train_options()
    return {k: v for k, v in vars(args).items() if k in dests and k not in ("config", "resume")}


def make_objective(base, space, out_root):
    from ..cli.commands import prepare_run, run_fit

    def objective(trial):
        params = {name: dim.suggest(trial) for name, dim in space.items()}
        args = trial_args(base, params, os.path.join(out_root, f"trial_{trial.number:04d}"))
        trial.set_user_attr("train_options", options_dict(args))
        run = prepare_run(args)
        reporter = ReportToOptuna(trial, args.epochs)
        run.callbacks.append(reporter)
        t0 = time.perf_counter()
        history = run_fit(run, progress=False, log=lambda *a, **k: None)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        accs = [a for a in history["val_acc"] if a is not None]
        return max(accs)

    return objective


# -----------------------------------------------------------------------------
# Running a study (one process, or several sharing the storage)
# -----------------------------------------------------------------------------
def _check(args):
    from ..cli.commands import CLIError
    from .search import SpaceError, parse_space
    if args.val_split <= 0:
        raise CLIError("tune selects on validation accuracy: --val-split must be > 0 "
                       "(the test set is never used for selection)")
    if args.trials is not None and args.trials < 1:
        raise CLIError(f"--trials must be >= 1, got {args.trials}")
    if args.jobs < 1:
        raise CLIError(f"--jobs must be >= 1, got {args.jobs}")
    if args.resume:
        raise CLIError("--resume does not apply to tune: re-run the same command to continue the study")
    try:
        space = parse_space(args.space, train_options())
    except SpaceError as e:
        raise CLIError(str(e)) from None
    if not space:
        raise CLIError("give a search space: --space name=values (e.g. --space lr=1e-4:1e-1:log) "
                       "or --space space.json")
    return space


def storage_url(args):
    return args.storage or "sqlite:///" + os.path.join(os.path.abspath(args.out), "tune.db")


def _load_study(args, space, worker=0):
    from ..cli.commands import CLIError
    from .search import SpaceError, make_pruner, make_sampler, open_storage, sampler_seed
    optuna = _import_optuna()
    storage = open_storage(storage_url(args))
    seed = args.seed if args.study_seed is None else args.study_seed
    try:
        n_existing = len(optuna.load_study(study_name=args.study, storage=storage).trials)
    except KeyError:
        n_existing = 0
    if args.storage and args.jobs == 1:
        # A study shared through --storage may have other workers started by hand at the same
        # moment, with the same seed and the same count of existing trials: mixing in the
        # process id keeps them from drawing the same trials (such a run is then not
        # reproducible draw for draw — no shared study is, whoever finishes first changes it).
        worker = os.getpid()
    try:
        sampler = make_sampler(args.sampler, space, sampler_seed(seed, n_existing, worker))
        pruner = make_pruner(args.pruner, args.pruner_startup)
    except SpaceError as e:
        raise CLIError(str(e)) from None
    study = optuna.create_study(study_name=args.study, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    return study


def _optimize(args, space, n_trials, worker=0):
    """Run ``n_trials`` trials (None: until the grid is exhausted) in this process."""
    study = _load_study(args, space, worker)
    objective = make_objective(args, space, os.path.abspath(args.out))
    try:
        study.optimize(objective, n_trials=n_trials, catch=(), gc_after_trial=True)
    except ValueError as e:
        if "to the same parameter name" in str(e):       # Optuna: the space changed under a study
            from ..cli.commands import CLIError
            raise CLIError(f"study {args.study!r} already has trials with another search space for a "
                           f"parameter ({e}); keep the space, or start a new study with --study NAME") from None
        raise
    return study


def _worker(arg_dict, n_trials, worker):
    """Entry point of a ``--jobs`` worker process (started with the 'spawn' method)."""
    args = argparse.Namespace(**arg_dict)
    space = _check(args)
    _optimize(args, space, n_trials, worker)


def _trials_needed(args, space):
    if args.trials is not None:
        return args.trials
    if args.sampler == "grid":
        from .search import grid_of
        n = 1
        for values in grid_of(space).values():
            n *= len(values)
        return n
    return 20


def cmd_tune(args):
    import multiprocessing as mp
    from ..cli.commands import CLIError
    optuna = _import_optuna()
    space = _check(args)
    os.makedirs(args.out, exist_ok=True)
    url = storage_url(args)
    study = _load_study(args, space)                      # creates the study (once, before any worker)
    before = len(study.trials)
    n = _trials_needed(args, space)
    print(f"study {args.study!r} in {url}: {before} trial(s) so far; adding {n} with the {args.sampler} "
          f"sampler, pruner {args.pruner}, {args.epochs} epoch(s) per trial, {args.jobs} worker(s)")
    print("search space: " + "; ".join(d.describe() for d in space.values()))
    t0 = time.perf_counter()
    if args.jobs == 1:
        _optimize(args, space, n)
    else:
        shares = [n // args.jobs + (1 if i < n % args.jobs else 0) for i in range(args.jobs)]
        ctx = mp.get_context("spawn")
        arg_dict = {k: v for k, v in vars(args).items() if k != "func"}
        procs = [ctx.Process(target=_worker, args=(arg_dict, share, i + 1)) for i, share in enumerate(shares)
                 if share]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            raise CLIError(f"{len(bad)} tune worker(s) failed (exit status {bad}); the finished trials "
                           f"are kept in {url}")
    study = optuna.load_study(study_name=args.study, storage=_storage(url))
    print(f"{len(study.trials) - before} trial(s) in {time.perf_counter() - t0:.0f}s")
    print(trials_table(study))
    written = [write_trials_csv(study, os.path.join(args.out, "trials.csv"))]
    best = write_best(study, args, os.path.join(args.out, "best.json"))
    if best:
        written.append(best)
    if not args.no_plots:
        written += write_plots(study, args.out)
    print("wrote " + ", ".join(written))
    return 0


def _storage(url):
    from .search import open_storage
    return open_storage(url)


# -----------------------------------------------------------------------------
# Output: table, best.json, plots
# -----------------------------------------------------------------------------
def _rows(study):
    rows = []
    for t in study.trials:
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     "val_acc": "" if t.value is None else f"{t.value:.4f}",
                     "epochs": t.user_attrs.get("epochs_run", 0),
                     **{k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in t.params.items()}})
    return rows


def trials_table(study):
    """A text table: trial, state, best validation accuracy, epochs run, the sampled parameters."""
    rows = _rows(study)
    if not rows:
        return "(no trials)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.rjust(width[c]) for c in cols)]
    lines += ["  ".join(str(r.get(c, "")).rjust(width[c]) for c in cols) for r in rows]
    try:
        b = study.best_trial
        lines.append(f"best: trial {b.number}, validation accuracy {b.value:.4f}, {b.params}")
    except ValueError:
        lines.append("best: no completed trial yet")
    return "\n".join(lines)


def write_trials_csv(study, path):
    rows = _rows(study)
    cols = list(dict.fromkeys(k for r in rows for k in r)) or ["trial"]
    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def write_best(study, args, path):
    """``best.json``: the best trial's train options (``minicnn train --config`` reads them)."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    options = dict(best.user_attrs["train_options"])
    options["out"] = os.path.join(args.out, "best")
    doc = {"train_options": options, "val_accuracy": best.value, "trial": best.number,
           "params": best.params, "val_acc_history": best.user_attrs.get("val_acc_history"),
           "study": args.study, "storage": storage_url(args),
           "note": "minicnn train --config this-file retrains this trial (same seed: same validation accuracy)"}
    return write_json(path, doc)


def write_plots(study, out):
    """Optuna's matplotlib plots: history, parallel coordinates, importances, slices."""
    import warnings
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    plots = {"optimization_history.png": ovm.plot_optimization_history,
             "parallel_coordinate.png": ovm.plot_parallel_coordinate,
             "param_importances.png": ovm.plot_param_importances,
             "slice.png": ovm.plot_slice,
             "intermediate_values.png": ovm.plot_intermediate_values}
    written = []
    for name, fn in plots.items():
        if name == "param_importances.png" and (len(done) < 2 or not done[0].params):
            continue                                        # importances need >= 2 finished trials
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                fig.tight_layout()
                fig.savefig(os.path.join(out, name), dpi=100)
            plt.close(fig)
            written.append(os.path.join(out, name))
        except Exception as e:                              # e.g. every trial has the same value
            print(f"(no {name}: {type(e).__name__}: {e})", file=sys.stderr)
            plt.close("all")
    return written


# -----------------------------------------------------------------------------
# minicnn lr-find
# -----------------------------------------------------------------------------
def cmd_lr_find(args):
    from ..cli.commands import CLIError, prepare_run
    from .lr_range import lr_find
    run = prepare_run(args)
    try:
        result = lr_find(run.model, run.optimizer, run.train_loader, start_lr=args.start_lr,
                         end_lr=args.end_lr, num_iter=args.num_iter, smooth=args.smooth,
                         diverge=args.diverge, seed=args.seed, train_step=run.train_step)
    except ValueError as e:
        raise CLIError(str(e)) from None
    os.makedirs(args.out, exist_ok=True)
    print(f"lr range test: {args.model}, {args.optimizer}, batch {args.batch_size}, "
          f"{len(result.lrs)} of {args.num_iter} steps from {args.start_lr:g} to {args.end_lr:g}"
          + (" (stopped: the loss diverged)" if result.diverged else ""))
    for name, lr in result.suggestions.items():
        print(f"  {name:>10}: {lr:.3g}" + ("   <- suggestion" if name == "valley" else ""))
    plot = result.plot(os.path.join(args.out, "lr_find.png"),
                       title=f"lr range test: {args.model}, {args.optimizer}")
    data = os.path.join(args.out, "lr_find.json")
    write_json(data, {"lrs": result.lrs.tolist(), "losses": result.losses.tolist(),
                       "smoothed_losses": result.smoothed_losses.tolist(), "suggestions": result.suggestions,
                       "suggestion": result.suggestion, "diverged": result.diverged,
                       "config": {k: v for k, v in vars(args).items() if k != "func"}})
    print(f"wrote {plot}, {data}")
    return 0


def add_parser(sub):
    from ..cli.commands import add_train_arguments
    lf = sub.add_parser("lr-find", help="learning-rate range test: suggestions and a plot")
    add_train_arguments(lf)
    lf.add_argument("--start-lr", type=float, default=1e-7)
    lf.add_argument("--end-lr", type=float, default=10.0)
    lf.add_argument("--num-iter", type=int, default=100)
    lf.add_argument("--smooth", type=float, default=0.98)
    lf.add_argument("--diverge", type=float, default=4.0)
    lf.set_defaults(func=cmd_lr_find, out="runs/lr_find")

    t = sub.add_parser("tune", help="hyper-parameter search (Optuna): grid, random or TPE",
                       description="Search hyper-parameters; every train option is the fixed part of each "
                                   "trial. Trials select on validation accuracy, never the test set.")
    add_train_arguments(t)
    t.add_argument("--space", action="append", default=[], metavar="NAME=SPEC",
                   help="a searched option: name=a,b,c (a list), name=lo:hi (uniform), name=lo:hi:log; "
                        "or a JSON/TOML file of them; repeat for each option")
    t.add_argument("--trials", type=int, default=None,
                   help="trials to add in this run (default 20; grid: the whole grid)")
    t.add_argument("--sampler", default="tpe", choices=("grid", "random", "tpe"))
    t.add_argument("--pruner", default="median", choices=("median", "none"),
                   help="median: stop a trial whose epoch's validation accuracy is below the median of "
                        "earlier trials at that epoch")
    t.add_argument("--pruner-startup", type=int, default=3, metavar="N",
                   help="no pruning until N trials have finished (default 3)")
    t.add_argument("--storage", default=None, metavar="URL",
                   help="sqlite:///F.db, journal:F.log or an SQLAlchemy URL (default: sqlite in --out); "
                        "workers sharing it draw different trials (their sampler seeds mix in the process id)")
    t.add_argument("--study", default="minicnn", help="study name (re-running continues it)")
    t.add_argument("--study-seed", type=int, default=None,
                   help="the sampler's seed (default: --seed, which also seeds every trial's training)")
    t.add_argument("--jobs", type=int, default=1, help="worker processes sharing the study")
    t.add_argument("--no-plots", action="store_true", help="skip Optuna's plots (they take a few seconds)")
    t.set_defaults(func=cmd_tune, out="runs/tune")
