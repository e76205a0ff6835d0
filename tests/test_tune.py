"""minicnn.tune: the learning-rate range test, and the Optuna-backed search behind `minicnn tune`.

The lr_find tests use a tiny model on the quadrant toy task (milliseconds);
the search tests run real `minicnn tune` studies on 300 digits with 1-epoch
trials, in this process or in subprocesses (a killed worker, two workers).
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import minicnn as mc
from minicnn import nn, optim, rng
from minicnn.cli import commands as cli
from minicnn.data import DataLoader
from minicnn.tune import LRFindResult, exponential_lrs, lr_find, suggest_minimum, suggest_steepest, suggest_valley
from minicnn.tune.search import SpaceError, parse_dimension, parse_space, sampler_seed

from conftest import quadrant_images

pytestmark = pytest.mark.tutorial16        # what tutorials/16_*.ipynb teaches (tests/README.md)


# -----------------------------------------------------------------------------
# lr_find
# -----------------------------------------------------------------------------
def small_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))


def quadrant_loader(n=96, batch_size=16):
    return DataLoader(quadrant_images(n), batch_size=batch_size, shuffle=True)


def recording_step(seen):
    from minicnn.train import standard_step

    def step(model, optimizer, x, y, loss_fn):
        seen.append([g["lr"] for g in optimizer.param_groups])
        return standard_step(model, optimizer, x, y, loss_fn)
    return step


def test_schedule_is_exactly_exponential_and_is_what_the_optimizer_used():
    model = small_net()
    opt = optim.SGD([{"params": list(model.parameters())[:4]}, {"params": list(model.parameters())[4:]}],
                    lr=0.1)
    seen = []
    r = lr_find(model, opt, quadrant_loader(), start_lr=1e-5, end_lr=1e-2, num_iter=13,
                train_step=recording_step(seen))
    ratio = (1e-2 / 1e-5) ** (1 / 12)
    assert r.schedule[0] == 1e-5 and np.isclose(r.schedule[-1], 1e-2, rtol=1e-14, atol=0)
    np.testing.assert_allclose(r.schedule[1:] / r.schedule[:-1], ratio, rtol=1e-13)
    np.testing.assert_allclose(r.schedule, 1e-5 * 10 ** (np.arange(13) / 4), rtol=1e-13)
    assert len(r.lrs) == 13 and not r.diverged                  # a gentle range: no early stop
    np.testing.assert_array_equal(r.lrs, r.schedule)
    np.testing.assert_array_equal(np.array(seen), np.stack([r.schedule, r.schedule], 1))  # every group
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]    # and put back afterwards


def test_smoothed_loss_is_the_bias_corrected_moving_average():
    model = small_net()
    r = lr_find(model, optim.Adam(model.parameters()), quadrant_loader(), end_lr=1e-2, num_iter=20,
                smooth=0.9)
    avg, expect = 0.0, []
    for i, loss in enumerate(r.losses):
        avg = 0.9 * avg + 0.1 * loss
        expect.append(avg / (1 - 0.9 ** (i + 1)))
    np.testing.assert_allclose(r.smoothed_losses, expect, rtol=1e-12)
    assert r.smoothed_losses[0] == pytest.approx(r.losses[0], rel=1e-14)   # bias correction: no pull to 0


def test_restores_model_optimizer_and_rng_bit_exactly():
    model = small_net()
    opt = optim.Adam(model.parameters(), lr=3e-3)
    loader = quadrant_loader()
    x, y = next(iter(loader))
    loss = mc.functional.cross_entropy(model(x), y)       # one real step: Adam has moments, BN has stats
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.eval()
    model[7].train()                                       # a mixed train/eval state must come back too
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    opt_before = opt.state_dict()
    rng_before = json.dumps(rng.get_rng_state(), default=str)
    modes = [m.training for m in model.modules()]

    r = lr_find(model, opt, loader, end_lr=100, num_iter=60)
    assert len(r.lrs) > 5

    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)
        assert v.numpy().dtype == before[k].dtype
    for p, g in zip(model.parameters(), grads):
        np.testing.assert_array_equal(p.grad.numpy(), g)
    after = opt.state_dict()
    assert after["param_groups"] == opt_before["param_groups"]
    assert after["state"].keys() == opt_before["state"].keys()
    for i, s in opt_before["state"].items():
        for k, v in s.items():
            np.testing.assert_array_equal(np.asarray(after["state"][i][k]), np.asarray(v), err_msg=f"{i}.{k}")
    assert json.dumps(rng.get_rng_state(), default=str) == rng_before
    assert [m.training for m in model.modules()] == modes


def test_seeded_by_default_so_two_calls_agree():
    model = small_net()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    a = lr_find(model, opt, quadrant_loader(), num_iter=30)
    rng.generator().random(7)                             # the caller's generator moved on: no matter
    b = lr_find(model, opt, quadrant_loader(), num_iter=30)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert a.suggestions == b.suggestions


def test_stops_when_the_loss_diverges():
    model = small_net()
    r = lr_find(model, optim.SGD(model.parameters(), lr=0.1), quadrant_loader(), start_lr=1e-4,
                end_lr=1e4, num_iter=100, diverge=4.0)
    assert r.diverged and len(r.lrs) < 100
    s = r.smoothed_losses
    if len(s) == len(r.losses):                           # stopped on the rule, not on a non-finite loss
        assert s[-1] > 4.0 * s.min() and np.all(s[:-1] <= 4.0 * np.minimum.accumulate(s)[:-1])
    assert np.all(np.isfinite(r.losses))


def test_suggestions_lie_inside_the_swept_range():
    model = small_net()
    for opt in (optim.SGD(model.parameters(), lr=0.1), optim.Adam(model.parameters())):
        r = lr_find(model, opt, quadrant_loader(), num_iter=50)
        assert set(r.suggestions) == {"steepest", "minimum/10", "valley"}
        assert r.suggestion == r.suggestions["valley"]
        for name, lr in r.suggestions.items():
            assert r.lrs[0] <= lr <= r.lrs[-1], (name, lr, r.lrs[0], r.lrs[-1])


def test_suggestions_on_a_hand_made_curve():
    lrs = np.logspace(-5, 0, 11)                    # 1e-5, 10^-4.5, ..., 1
    curve = np.array([2.3, 2.3, 2.2, 1.9, 1.2, 0.8, 0.6, 0.5, 0.45, 1.0, 3.0])
    # slope per unit log lr is most negative between 1.9 and 1.2 (central difference at index 4)
    assert suggest_steepest(lrs, curve) == lrs[4]
    assert suggest_minimum(lrs, curve) == pytest.approx(lrs[8] / 10)
    # the longest decreasing run is indices 1..8 (length 8: max_end 8, max_start 0):
    # sections = 8/3, idx = 0 + 2 + 1 = 3
    assert suggest_valley(lrs, curve) == lrs[3]


def test_plot_marks_every_suggestion(tmp_path):
    model = small_net()
    r = lr_find(model, optim.Adam(model.parameters()), quadrant_loader(), num_iter=30)
    assert isinstance(r, LRFindResult) and "valley" in repr(r)
    path = r.plot(str(tmp_path / "lr.png"))
    assert os.path.getsize(path) > 1000
    import matplotlib.pyplot as plt
    ax = r.plot()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum(lab.split(":")[0] in r.suggestions for lab in labels) == 3
    plt.close("all")


def test_bad_arguments_are_clear_errors():
    model = small_net()
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        lr_find(model, opt, quadrant_loader(), start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="num_iter"):
        lr_find(model, opt, quadrant_loader(), num_iter=1)
    with pytest.raises(ValueError, match="smooth"):
        lr_find(model, opt, quadrant_loader(), smooth=1.0)


def test_exponential_lrs_endpoints():
    s = exponential_lrs(1e-7, 10, 100)
    assert s[0] == 1e-7 and np.isclose(s[-1], 10, rtol=1e-14) and len(s) == 100


# -----------------------------------------------------------------------------
# The search space
# -----------------------------------------------------------------------------
OPTIONS = None


def options():
    global OPTIONS
    if OPTIONS is None:
        from minicnn.tune.cli import train_options
        OPTIONS = train_options()
    return OPTIONS


def test_space_strings_parse():
    space = parse_space(["lr=1e-4:1e-1:log", "batch_size=32,64,128", "optimizer=sgd,momentum,adam",
                         "weight-decay=0:1e-3", "dropout=0.2:0.6", "kernel_size=3,5", "augment=on,off",
                         "epochs=1:3"], options())
    assert (space["lr"].kind, space["lr"].low, space["lr"].high, space["lr"].log) == ("float", 1e-4, 0.1, True)
    assert space["batch_size"].choices == (32, 64, 128)
    assert space["optimizer"].choices == ("sgd", "momentum", "adam")
    assert space["weight_decay"].kind == "float" and not space["weight_decay"].log
    assert space["kernel_size"].choices == (3, 5)
    assert space["augment"].choices == (True, False)
    assert space["epochs"].kind == "int"


@pytest.mark.parametrize("token, fragment", [
    ("lr", "expected name=values"),
    ("=1,2", "no option name"),
    ("learning_rate=1e-3:1e-1", "'learning_rate' is not a train option"),
    ("out=a,b", "'out' is not a train option"),
    ("lr=", "no values"),
    ("lr=1e-4:abc:log", "'abc' is not a number"),
    ("lr=1e-1:1e-4", "lo < hi"),
    ("lr=0:1e-1:log", "log range needs lo > 0"),
    ("lr=1e-4:1e-1:lin", "lo:hi or lo:hi:log"),
    ("batch_size=32,sixty", "'sixty' is not a valid int"),
    ("batch_size=16:64.5", "takes integers"),
    ("optimizer=sgd,adamm", "'adamm' is not one of optimizer's choices"),
    ("optimizer=sgd:adam", "not numeric"),
    ("augment=on,maybe", "'maybe' is not on/off"),
    ("batch_size=32,,64", "empty value"),
    ("batch_size=32,32", "listed twice"),
])
def test_bad_space_strings_name_the_token(token, fragment):
    with pytest.raises(SpaceError) as e:
        parse_dimension(token, options())
    assert fragment in str(e.value) and repr(token) in str(e.value), str(e.value)


def test_space_from_json_and_toml_files(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"lr": "1e-4:1e-1:log", "batch_size": [32, 64],
                                                 "augment": [True, False]}))
    (tmp_path / "s.toml").write_text('[space]\nlr = "1e-4:1e-1:log"\nbatch_size = [32, 64]\n'
                                     'augment = [true, false]\n')
    a = parse_space([str(tmp_path / "s.json")], options())
    b = parse_space([str(tmp_path / "s.toml")], options())
    c = parse_space(["lr=1e-4:1e-1:log", "batch_size=32,64", "augment=on,off"], options())
    strip = lambda s: {k: (d.kind, d.low, d.high, d.log, d.choices) for k, d in s.items()}  # noqa: E731
    assert strip(a) == strip(b) == strip(c)
    with pytest.raises(SpaceError, match="already searched"):
        parse_space(["lr=1e-3,1e-2", str(tmp_path / "s.json")], options())


def test_rerun_draws_a_new_sampler_seed():
    assert sampler_seed(0, 0) != sampler_seed(0, 4) != sampler_seed(0, 4, worker=1)
    assert sampler_seed(3, 4) == sampler_seed(3, 4)


# -----------------------------------------------------------------------------
# Studies (real `minicnn tune` runs on 300 digits, 1-epoch trials)
# -----------------------------------------------------------------------------
optuna = pytest.importorskip("optuna")
TINY = ["--limit-train", "300", "--limit-test", "20", "--val-split", "0.2", "--epochs", "1",
        "--no-progress", "--batch-size", "32"]
FAST = ["--model", "lenet5", "--no-plots"]            # where accuracy does not matter: a 5x smaller model


def tune(tmp_path, *extra, capsys=None):
    argv = ["tune", *TINY, "--out", str(tmp_path), *extra]
    status = cli.main(argv)
    assert status == 0, capsys.readouterr().err if capsys else status
    return load(tmp_path)


def load(folder, url=None):
    from minicnn.tune.search import open_storage
    url = url or "sqlite:///" + os.path.join(os.path.abspath(folder), "tune.db")
    return optuna.load_study(study_name="minicnn", storage=open_storage(url))


def test_a_study_completes_is_stored_and_continues(tmp_path, capsys):
    study = tune(tmp_path, "--trials", "4", "--sampler", "random", "--space", "lr=1e-4:1e-2:log",
                 "--space", "batch_size=16,32,64", "--model", "lenet5", capsys=capsys)
    out = capsys.readouterr().out
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert all(0 <= t.value <= 1 and t.user_attrs["epochs_run"] == 1 for t in study.trials)
    assert "val_acc" in out and "best: trial" in out
    for name in ("tune.db", "trials.csv", "best.json", "optimization_history.png", "parallel_coordinate.png",
                 "param_importances.png"):
        assert os.path.getsize(tmp_path / name) > 0, name
    first = [t.params for t in study.trials]
    study = tune(tmp_path, "--trials", "2", "--sampler", "random", "--space", "lr=1e-4:1e-2:log",
                 "--space", "batch_size=16,32,64", *FAST, capsys=capsys)
    assert "4 trial(s) so far" in capsys.readouterr().out
    assert len(study.trials) == 6 and [t.params for t in study.trials[:4]] == first
    assert study.trials[4].params not in first                  # a re-run does not redraw old trials
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["val_accuracy"] == study.best_value and best["trial"] == study.best_trial.number


def test_grid_covers_the_grid_exactly(tmp_path, capsys):
    study = tune(tmp_path, "--sampler", "grid", "--space", "lr=1e-3,3e-3", "--space", "batch_size=32,64",
                 *FAST, capsys=capsys)
    got = sorted((t.params["lr"], t.params["batch_size"]) for t in study.trials)
    assert got == [(1e-3, 32), (1e-3, 64), (3e-3, 32), (3e-3, 64)]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert cli.main(["tune", *TINY, "--out", str(tmp_path), "--sampler", "grid", "--space", "lr=1e-3:1e-2"]) == 2
    assert "grid search needs a list" in capsys.readouterr().err


def test_the_median_pruner_prunes_a_hopeless_trial(tmp_path, capsys):
    two = ["--epochs", "2", "--pruner", "median", "--pruner-startup", "1", "--no-plots"]
    tune(tmp_path, *two, "--trials", "1", "--sampler", "random", "--space", "lr=3e-3:3.001e-3:log", capsys=capsys)
    study = tune(tmp_path, *two, "--trials", "1", "--sampler", "random", "--space", "lr=1e-9:2e-9:log",
                 capsys=capsys)
    good, bad = study.trials
    assert good.state.name == "COMPLETE" and good.user_attrs["epochs_run"] == 2
    assert bad.state.name == "PRUNED" and bad.user_attrs["epochs_run"] == 1, (good.value, bad.user_attrs)
    assert bad.intermediate_values[0] < good.intermediate_values[0]
    assert cli.main(["tune", *TINY, *two, "--out", str(tmp_path), "--space", "lr=1e-3,1e-2"]) == 2
    assert "another search space" in capsys.readouterr().err


def test_best_json_reproduces_the_best_trial_exactly(tmp_path, capsys):
    tune(tmp_path, "--trials", "2", "--sampler", "random", "--space", "lr=1e-3:1e-2:log",
         "--space", "kernel_size=3,5", "--space", "augment=on,off", "--no-plots", capsys=capsys)
    best = json.loads((tmp_path / "best.json").read_text())
    out = tmp_path / "retrain"
    assert cli.main(["train", "--config", str(tmp_path / "best.json"), "--out", str(out)]) == 0
    history = json.loads((out / "history.json").read_text())["history"]
    assert history["val_acc"] == best["val_acc_history"]        # exactly: same seed, same numbers
    assert max(history["val_acc"]) == best["val_accuracy"]
    for k, v in best["params"].items():
        assert json.loads((out / "history.json").read_text())["config"][k] == v


def test_config_file_errors(tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"lr": 0.01, "learning_rate": 3}')
    assert cli.main(["train", "--config", str(tmp_path / "c.json")]) == 2
    assert "unknown option(s) learning_rate" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(tmp_path / "missing.json")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_tune_refuses_to_select_without_validation(tmp_path, capsys):
    assert cli.main(["tune", *TINY, "--val-split", "0", "--out", str(tmp_path), "--space", "lr=1e-3,1e-2"]) == 2
    assert "--val-split must be > 0" in capsys.readouterr().err
    assert cli.main(["tune", *TINY, "--out", str(tmp_path), "--space", "lr=1e-3:oops"]) == 2
    assert "'oops' is not a number" in capsys.readouterr().err


def test_without_optuna_tune_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)            # import optuna -> ImportError
    assert cli.main(["tune", *TINY, "--out", str(tmp_path), "--space", "lr=1e-3,1e-2"]) == 2
    assert 'pip install "minicnn[tune]"' in capsys.readouterr().err
    model = small_net()                                         # lr_find needs nothing beyond minicnn
    assert len(lr_find(model, optim.Adam(model.parameters()), quadrant_loader(), num_iter=5).lrs) == 5


def test_lr_find_command_prints_suggestions_and_writes_the_plot(tmp_path, capsys):
    assert cli.main(["lr-find", *TINY, "--model", "lenet5", "--num-iter", "12", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert "valley" in out and "<- suggestion" in out and len(saved["lrs"]) <= 12
    assert saved["suggestion"] == saved["suggestions"]["valley"]
    assert os.path.getsize(tmp_path / "lr_find.png") > 1000
    assert cli.main(["lr-find", *TINY, "--start-lr", "1", "--end-lr", "0.1", "--out", str(tmp_path)]) == 2
    assert "start_lr < end_lr" in capsys.readouterr().err


def _cmd(folder, *extra):
    return [sys.executable, "-m", "minicnn.cli", "tune", *TINY, "--out", str(folder), "--sampler", "random",
            "--space", "lr=1e-4:1e-2:log", *FAST, *extra]


def _kill_mid_trial(folder, attempts=3):
    """Start a long study, SIGKILL it while a trial runs (after at least one finished).

    Returns (the finished trials seen just before the kill, the study after it). A kill can
    land just after the running trial finished (trials on TINY are short); then the study is
    started again and killed again — each attempt continues the same study.
    """
    for _ in range(attempts):
        proc = subprocess.Popen(_cmd(folder, "--trials", "50", "--epochs", "30"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 240
            while time.time() < deadline:
                time.sleep(0.2)
                if proc.poll() is not None:
                    pytest.fail("the tune process ended before it was killed: " + proc.stderr.read().decode())
                if not os.path.exists(folder / "tune.db"):
                    continue
                try:
                    trials = load(folder).trials
                except KeyError:                                 # the study is not created yet
                    continue
                if trials and trials[-1].state.name == "RUNNING" and \
                        any(t.state.name == "COMPLETE" for t in trials):
                    break
            else:
                pytest.fail("no trial finished in time")
            proc.send_signal(signal.SIGKILL)                     # a real signal, no clean-up
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL
        before = {t.number: t.value for t in trials if t.state.name == "COMPLETE"}
        study = load(folder)
        if study.trials[-1].state.name == "RUNNING":             # killed mid-trial, as intended
            return before, study
    pytest.fail(f"in {attempts} attempts the kill always landed between two trials")


def test_a_killed_worker_loses_no_finished_trial_and_the_study_resumes(tmp_path):
    before, study = _kill_mid_trial(tmp_path)
    finished = {t.number: t.value for t in study.trials if t.state.name == "COMPLETE"}
    assert {k: finished.get(k) for k in before} == before         # nothing that had finished was lost
    assert len(finished) >= 1 and study.trials[-1].state.name == "RUNNING"
    r = subprocess.run(_cmd(tmp_path, "--trials", "1"), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    study = load(tmp_path)
    again = {t.number: t.value for t in study.trials if t.state.name == "COMPLETE"}
    assert {k: again[k] for k in finished} == finished           # every finished trial is still there
    assert len(again) == len(finished) + 1                        # and the study went on


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_two_workers_share_one_study(tmp_path, storage):
    url = ("sqlite:///" + str(tmp_path / "shared.db")) if storage == "sqlite" else f"journal:{tmp_path}/j.log"
    if storage == "sqlite":                                      # two processes started by hand, at once
        procs = [subprocess.Popen(_cmd(tmp_path / f"w{i}", "--trials", "2", "--storage", url),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (o, e) in zip(procs, outs):
            assert p.returncode == 0, e
            assert "locked" not in e
    else:                                                        # --jobs 2: tune starts the workers
        r = subprocess.run(_cmd(tmp_path, "--trials", "4", "--jobs", "2", "--storage", url),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "locked" not in r.stderr, r.stderr
    study = load(tmp_path, url)
    n = 4
    assert len(study.trials) == n and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({t.params["lr"] for t in study.trials}) == n      # the workers drew different trials


# -----------------------------------------------------------------------------
# Model shape options
# -----------------------------------------------------------------------------
def test_model_shape_options_reach_the_model_and_the_checkpoint(tmp_path):
    from minicnn.models import get_model
    m = get_model("reference", kernel_size=5, dropout=0.25)
    assert m[0].weight.shape == (32, 1, 5, 5) and m[7].weight.shape == (128, 64 * 4 * 4)
    assert m(mc.tensor(np.zeros((2, 1, 28, 28), np.float32))).shape == (2, 10)
    with pytest.raises(ValueError, match="has no option kernel_size"):
        get_model("lenet5", kernel_size=5)
    args = cli.make_parser().parse_args(["train", "--kernel-size", "5", "--dropout", "0.25", *TINY[:4],
                                         "--out", str(tmp_path)])
    run = cli.prepare_run(args)
    assert run.model[0].weight.shape == (32, 1, 5, 5) and run.model[9].p == 0.25
    assert run.config["model_kwargs"] == {"kernel_size": 5, "dropout": 0.25}
    state = {"config": run.config, "model": run.model.state_dict()}
    rebuilt, _ = cli.model_from_checkpoint(state)
    assert rebuilt[0].weight.shape == (32, 1, 5, 5)
