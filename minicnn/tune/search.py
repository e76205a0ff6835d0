"""The search behind ``minicnn tune``: search spaces, the Optuna study, samplers and pruners.

**The search** (:func:`run_study`, behind ``minicnn tune``) is Optuna's
(https://optuna.org): a *study* is a set of *trials*, each one training run
with hyper-parameters drawn by a *sampler* — a grid, random draws, or TPE
(Bergstra et al. 2011, a Bayesian method that models which values gave good
results and samples near them). A *pruner* stops trials whose per-epoch
validation accuracy is below the median of earlier trials at the same epoch.
The study lives in a database (SQLite by default), so a study continues where
it stopped and several processes can share one. Optuna is imported only when a
search runs: ``pip install "minicnn[tune]"``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# -----------------------------------------------------------------------------
# The search space: "name=spec" strings -> dimensions
# -----------------------------------------------------------------------------
class SpaceError(ValueError):
    """A search-space string that cannot be read; the message names the token."""


_TRUE = {"on", "true", "yes", "1"}
_FALSE = {"off", "false", "no", "0"}
NOT_SEARCHABLE = {"out", "resume", "config", "no_progress", "data_dir", "no_download", "func"}


@dataclass
class Dimension:
    """One searched option: ``kind`` is "float", "int" or "categorical"."""
    name: str
    kind: str
    low: float = None
    high: float = None
    log: bool = False
    choices: tuple = ()
    token: str = ""

    def suggest(self, trial):
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def describe(self):
        if self.kind == "categorical":
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}{' (int)' if self.kind == 'int' else ''}"


def _is_int_literal(text):
    t = text.strip().lstrip("+-")
    return t.isdigit()


def _number(text, token):
    try:
        return float(text)
    except ValueError:
        raise SpaceError(f"search space {token!r}: {text.strip()!r} is not a number") from None


def _convert(value, action, name, token):
    """One categorical value, converted the way the train option would convert it."""
    text = value.strip()
    if not text:
        raise SpaceError(f"search space {token!r}: an empty value in the list")
    if action.nargs == 0:                                  # a store_true flag such as --augment
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SpaceError(f"search space {token!r}: {text!r} is not on/off (the option {name} is a switch)")
    conv = action.type or str
    try:
        out = conv(text)
    except (TypeError, ValueError):
        kind = getattr(conv, "__name__", "value")
        raise SpaceError(f"search space {token!r}: {text!r} is not a valid {kind} for {name}") from None
    if action.choices is not None and out not in action.choices:
        raise SpaceError(f"search space {token!r}: {text!r} is not one of {name}'s choices "
                         f"({', '.join(map(str, action.choices))})")
    return out


def parse_dimension(token, options):
    """``"lr=1e-4:1e-1:log"`` -> a :class:`Dimension`; ``options`` maps option names to argparse actions.

    Forms: ``name=a,b,c`` (a list: categorical), ``name=lo:hi`` (uniform; integer
    when both ends are integers), ``name=lo:hi:log`` (log-uniform). ``name`` is a
    train option, written with ``_`` or ``-`` (``batch_size``, ``batch-size``).
    """
    if not isinstance(token, str) or "=" not in token:
        raise SpaceError(f"search space {token!r}: expected name=values, e.g. lr=1e-4:1e-1:log "
                         "or batch_size=32,64,128")
    key, spec = token.split("=", 1)
    name = key.strip().lstrip("-").replace("-", "_")
    if not name:
        raise SpaceError(f"search space {token!r}: no option name before '='")
    if name in NOT_SEARCHABLE or name not in options:
        known = ", ".join(sorted(k for k in options if k not in NOT_SEARCHABLE))
        raise SpaceError(f"search space {token!r}: {key.strip()!r} is not a train option one can search "
                         f"(options: {known})")
    action = options[name]
    spec = spec.strip()
    if not spec:
        raise SpaceError(f"search space {token!r}: no values after '='")
    if ":" in spec and "," not in spec:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip().lower() != "log"):
            raise SpaceError(f"search space {token!r}: a range is lo:hi or lo:hi:log, got {spec!r}")
        if action.nargs == 0 or action.choices is not None or action.type not in (int, float):
            raise SpaceError(f"search space {token!r}: {name} is not numeric; give a list, "
                             f"e.g. {name}=a,b")
        log = len(parts) == 3
        low, high = _number(parts[0], token), _number(parts[1], token)
        if not low < high:
            raise SpaceError(f"search space {token!r}: the range needs lo < hi, got {parts[0]} and {parts[1]}")
        if log and low <= 0:
            raise SpaceError(f"search space {token!r}: a log range needs lo > 0, got {parts[0]}")
        as_int = action.type is int or (_is_int_literal(parts[0]) and _is_int_literal(parts[1])
                                        and action.type is not float)
        if action.type is int and not (_is_int_literal(parts[0]) and _is_int_literal(parts[1])):
            raise SpaceError(f"search space {token!r}: {name} takes integers, got {spec!r}")
        return Dimension(name, "int" if as_int else "float", low, high, log, token=token)
    values = [_convert(v, action, name, token) for v in spec.split(",")]
    if len(set(values)) != len(values):
        raise SpaceError(f"search space {token!r}: a value is listed twice")
    return Dimension(name, "categorical", choices=tuple(values), token=token)


def _load_space_file(path):
    """A JSON or TOML table ``{name: "lo:hi:log" | [v1, v2, ...]}`` -> tokens ``name=spec``."""
    import json
    import os
    if not os.path.isfile(path):
        raise SpaceError(f"search space file not found: {path}")
    try:
        if path.lower().endswith(".toml"):
            import tomllib
            with open(path, "rb") as f:
                table = tomllib.load(f)
        else:
            with open(path) as f:
                table = json.load(f)
    except Exception as e:
        raise SpaceError(f"search space file {path}: cannot read it ({type(e).__name__}: {e})") from None
    table = table.get("space", table) if isinstance(table, dict) else table
    if not isinstance(table, dict):
        raise SpaceError(f"search space file {path}: expected a table of name = values")
    tokens = []
    for k, v in table.items():
        if isinstance(v, (list, tuple)):
            words = [("on" if x else "off") if isinstance(x, bool) else str(x) for x in v]
            tokens.append(f"{k}={','.join(words)}")
        elif isinstance(v, str):
            tokens.append(f"{k}={v}")
        else:
            raise SpaceError(f"search space file {path}: {k} = {v!r}: expected a list or a string "
                             "such as \"1e-4:1e-1:log\"")
    return tokens


def parse_space(tokens, options):
    """Many ``name=spec`` tokens (or paths of JSON/TOML files of them) -> ``{name: Dimension}``."""
    import os
    expanded = []
    for token in tokens or ():
        if "=" not in token and (token.lower().endswith((".json", ".toml")) or os.path.isfile(token)):
            expanded.extend(_load_space_file(token))
        else:
            expanded.append(token)
    space = {}
    for token in expanded:
        dim = parse_dimension(token, options)
        if dim.name in space:
            raise SpaceError(f"search space {token!r}: {dim.name} is already searched "
                             f"({space[dim.name].token!r})")
        space[dim.name] = dim
    return space


def grid_of(space):
    """The grid sampler's space ``{name: [values]}``; every dimension must be a list."""
    grid = {}
    for dim in space.values():
        if dim.kind != "categorical":
            raise SpaceError(f"search space {dim.token!r}: grid search needs a list of values "
                             f"(e.g. {dim.name}=a,b,c), not a range")
        grid[dim.name] = list(dim.choices)
    return grid


# -----------------------------------------------------------------------------
# The study database
# -----------------------------------------------------------------------------
def _check_journal(path):
    """Every complete line of an Optuna journal must be a JSON object (raise ValueError otherwise).

    Optuna itself forgives an undecodable *last* line (it may be a write in
    progress) and fails later, mid-study, when the next line is appended; a
    line ending in a newline was written completely, so garbage there is a
    corrupt file. Only a last line without its newline is left to Optuna.
    """
    import json
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break
            try:
                entry = json.loads(line)
            except ValueError as e:
                raise ValueError(f"line {number}: {e}") from None
            if not isinstance(entry, dict):
                raise ValueError(f"line {number}: not a JSON object")


class StudyStorageError(ValueError):
    """A study file (SQLite database, Optuna journal) that cannot be read: corrupt, truncated, not one."""


def open_storage(url, heartbeat_interval=5, grace_period=30):
    """An Optuna storage for ``url``, safe for several processes at once.

    * ``sqlite:///path.db`` — SQLite in WAL mode with a 60 s busy timeout, so
      concurrent writers wait for each other instead of failing with
      "database is locked";
    * ``journal:path.log`` — Optuna's journal file storage (an append-only
      log with file locks; the storage Optuna recommends for several
      processes without a database server);
    * any other SQLAlchemy URL (``postgresql://...``) — as Optuna opens it.

    With a heartbeat, a trial whose process was killed is marked FAIL by the
    next worker that starts once ``grace_period`` seconds have passed.
    """
    import os
    import sqlite3
    import optuna
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        try:
            from optuna.storages.journal import JournalFileBackend          # Optuna >= 4
        except ImportError:                                                # Optuna 3.x
            from optuna.storages import JournalFileStorage as JournalFileBackend
        path = url[len("journal:"):]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            _check_journal(path)
            return JournalStorage(JournalFileBackend(path))      # replays the whole log: reads every line
        except (ValueError, KeyError, TypeError) as e:           # not a journal (JSON lines Optuna wrote)
            raise StudyStorageError(f"the tune study {path} is not a readable Optuna journal "
                                    f"({type(e).__name__}: {e}); move it away to start a new study") from None
    import contextlib
    import warnings
    engine_kwargs, lock = {}, contextlib.nullcontext()
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            lock = _file_lock(path + ".lock")
        engine_kwargs = {"connect_args": {"timeout": 60}}
    # Two processes opening a new database at once would both create its tables
    # ("table ... already exists"): the first to take the lock creates them.
    with lock:
        if url.startswith("sqlite:///") and path and path != ":memory:":
            con = sqlite3.connect(path, timeout=60)
            try:
                con.execute("PRAGMA journal_mode=WAL")     # persistent: readers never block writers
                # random bytes, a truncated copy: found now, with the file's name, not mid-study
                problem = con.execute("PRAGMA quick_check").fetchone()[0]
                if problem != "ok":
                    raise sqlite3.DatabaseError(problem)
            except sqlite3.DatabaseError as e:
                raise StudyStorageError(f"the tune study {path} is not a readable SQLite database "
                                        f"({e}); move it away to start a new study") from None
            finally:
                con.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)   # heartbeat_interval
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                              heartbeat_interval=heartbeat_interval,
                                              grace_period=grace_period)


def _file_lock(path):
    """An exclusive lock on ``path`` (POSIX flock; no lock where fcntl is missing)."""
    import contextlib
    try:
        import fcntl
    except ImportError:                                    # Windows: one process at a time is assumed
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def locked():
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    return locked()


def make_sampler(kind, space, seed):
    import optuna
    if kind == "grid":
        return optuna.samplers.GridSampler(grid_of(space), seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise SpaceError(f"unknown sampler {kind!r}; expected grid, random or tpe")


def make_pruner(kind, startup_trials=3):
    import optuna
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise SpaceError(f"unknown pruner {kind!r}; expected median or none")


def sampler_seed(seed, n_existing, worker=0):
    """A seed for this run's sampler: re-running a study must not redraw the same trials."""
    return int(np.random.SeedSequence([int(seed), int(n_existing), int(worker)]).generate_state(1)[0])
