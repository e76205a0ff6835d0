"""The course's open-ended projects: one per part, scored once on the held-out test set.

Each project (``projects/<name>/README.md`` states it for the students) is a
:class:`Project`: a budget a submission must meet and a score to maximise.

==================  ===========================================  ==========================================
project             budget (checked on the submitted file)        score (on the MNIST test set, 10,000 images)
==================  ===========================================  ==========================================
``small-mnist``     at most 50,000 parameters                     accuracy
``compress-mnist``  at most 40,000 bytes: the checkpoint file      accuracy
                    compressed with zlib (level 9), so zeros
                    (pruning) and int8 weights (quantization)
                    both count
``robust-mnist``    clean accuracy at least 95 %                  robust accuracy at ε = 0.1 (pixel units):
                                                                  the lower of PGD-20 and FGSM, per image
==================  ===========================================  ==========================================

A submission is a minicnn checkpoint (``minicnn train`` writes one; for a model
of your own, ``mc.train.save_checkpoint(path, model, config={"model_name":
"custom", "architecture": compress.architecture(model), "normalization":
[0.1307, 0.3081]})``). Every project feeds the model pixels in [0, 1] through
``Normalize(config["normalization"])``, as ``minicnn attack`` does, so ε means
the same for every submission.

:func:`evaluate` scores one file and :func:`append_to_leaderboard` records it
(one official entry per team: the test set is looked at once). On the command
line: ``python projects/evaluate.py NAME CHECKPOINT --team NAME``.
"""
from __future__ import annotations

import csv
import datetime
import hashlib
import io
import os
import zlib
from dataclasses import dataclass

import numpy as np

from .. import no_grad, tensor
from ..attacks import fgsm, pgd
from ..attacks.cli import pixel_model
from ..cli.commands import load_checkpoint_file
from ..data import get_dataset
from ..data.transforms import to_float
from ..io import write_text

OFFICIAL_DATASET = "mnist"
LEADERBOARD_FIELDS = ["team", "score", "accuracy", "budget_value", "budget_limit", "test_images",
                      "dataset", "official", "sha256", "date", "note"]


class ProjectError(ValueError):
    """A submission that cannot be scored, or breaks its project's budget; the message says which."""


@dataclass(frozen=True)
class Project:
    name: str
    part: str               # the part of the course it closes
    budget: str             # what is limited, in words
    budget_limit: float
    score: str              # what is maximised, in words


PROJECTS = {
    "small-mnist": Project("small-mnist", "I", "parameters", 50_000, "test accuracy"),
    "compress-mnist": Project("compress-mnist", "II", "zlib-compressed checkpoint bytes", 40_000, "test accuracy"),
    "robust-mnist": Project("robust-mnist", "III", "clean test accuracy (minimum)", 0.95,
                            "robust test accuracy at eps 0.1 (min of PGD-20 and FGSM per image)"),
}
ROBUST_EPS = 0.1
ROBUST_STEPS = 20


def get_project(name) -> Project:
    if name not in PROJECTS:
        raise ProjectError(f"unknown project {name!r}; expected one of {', '.join(PROJECTS)}")
    return PROJECTS[name]


def sha256_of(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def compressed_size(path) -> int:
    """Bytes of the file at ``path`` after ``zlib.compress(..., 9)``: what zeros and int8 save, counted."""
    with open(path, "rb") as f:
        return len(zlib.compress(f.read(), 9))


def load_submission(path):
    """(pixel-unit model in eval mode, raw checkpoint state) of the checkpoint at ``path``."""
    if not os.path.isfile(path):
        raise ProjectError(f"no checkpoint at {path}")
    state = load_checkpoint_file(path)
    model, _ = pixel_model(state)        # Normalize(config["normalization"]) -> the network
    return model, state


def held_out_arrays(dataset=OFFICIAL_DATASET, data_dir=None, limit=None, download=True):
    """(images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,)) of ``dataset``'s held-out test split."""
    images, labels = get_dataset(dataset, train=False, root=data_dir, download=download).arrays()
    if limit is not None:
        if limit < 1:
            raise ProjectError(f"limit: expected a positive number of test images, got {limit}")
        images, labels = images[:limit], labels[:limit]
    x = to_float(images).reshape(len(images), 1, 28, 28)     # uint8 0..255 -> float32 [0, 1]
    return x, labels.astype(np.int64)


def predictions(model, x, batch_size=500):
    """Class predictions of ``model`` for the array ``x`` (N, 1, 28, 28), in batches, without gradients."""
    out = []
    with no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(tensor(x[i:i + batch_size])).numpy().argmax(1))
    return np.concatenate(out)


def robust_correct(model, x, y, eps=ROBUST_EPS, steps=ROBUST_STEPS, batch_size=250, seed=0):
    """Per image: still correct under both FGSM and PGD-``steps`` at ``eps`` (pixel units)? A bool array."""
    ok = []
    for i in range(0, len(x), batch_size):
        xb, yb = tensor(x[i:i + batch_size]), tensor(y[i:i + batch_size])
        adv_pgd = pgd(model, xb, yb, eps, steps=steps, seed=seed)
        adv_fgsm = fgsm(model, xb, yb, eps)
        with no_grad():
            right = (model(adv_pgd).numpy().argmax(1) == y[i:i + batch_size]) & \
                    (model(adv_fgsm).numpy().argmax(1) == y[i:i + batch_size])
        ok.append(right)
    return np.concatenate(ok)


def evaluate(name, checkpoint, dataset=OFFICIAL_DATASET, data_dir=None, limit=None, download=True) -> dict:
    """Score the checkpoint at ``checkpoint`` for project ``name``; raise :class:`ProjectError` over budget.

    Returns ``{"score", "accuracy", "budget_value", "budget_limit", "test_images", "dataset",
    "official", "sha256"}``. ``official`` is True only on the full MNIST test set (no ``limit``);
    anything else (the embedded digits, a subset) is a practice run.
    """
    project = get_project(name)
    model, state = load_submission(checkpoint)
    if name == "small-mnist":
        if "module" in state:
            raise ProjectError("small-mnist counts float parameters; submit a float32 checkpoint, not an int8 one")
        budget_value = model.num_parameters(trainable_only=False)
        if budget_value > project.budget_limit:
            raise ProjectError(f"small-mnist: the model has {budget_value:,} parameters; "
                               f"the budget is {int(project.budget_limit):,}")
    elif name == "compress-mnist":
        budget_value = compressed_size(checkpoint)
        if budget_value > project.budget_limit:
            raise ProjectError(f"compress-mnist: the checkpoint compresses to {budget_value:,} bytes; "
                               f"the budget is {int(project.budget_limit):,} (save the model alone, "
                               "without the optimizer state; prune, shrink or quantize it)")
    x, y = held_out_arrays(dataset, data_dir, limit, download)
    accuracy = float((predictions(model, x) == y).mean())
    score = accuracy
    if name == "robust-mnist":
        budget_value = accuracy
        if accuracy < project.budget_limit:
            raise ProjectError(f"robust-mnist: clean test accuracy {accuracy:.4f}; "
                               f"at least {project.budget_limit:.2f} is required")
        score = float(robust_correct(model, x, y).mean())
    return {"score": round(score, 4), "accuracy": round(accuracy, 4), "budget_value": budget_value,
            "budget_limit": project.budget_limit, "test_images": len(y), "dataset": dataset,
            "official": dataset == OFFICIAL_DATASET and limit is None, "sha256": sha256_of(checkpoint)}


def read_leaderboard(path) -> list:
    """The rows of the leaderboard CSV at ``path`` (an empty list if there is none yet)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def append_to_leaderboard(path, team, result, note="") -> list:
    """Add ``result`` (from :func:`evaluate`) for ``team`` to the CSV at ``path``; write the Markdown beside it.

    A team has one official entry: the test set is for the final number, not for
    choosing a model (choose on a validation split of the training set). A second
    official entry for the same team raises :class:`ProjectError`; practice runs
    (not official) may repeat. Returns the rows, best official score first.
    """
    team = team.strip()
    if not team or "," in team or "\n" in team:
        raise ProjectError(f"team: expected a non-empty name without commas or newlines, got {team!r}")
    rows = read_leaderboard(path)
    if result["official"] and any(r["team"] == team and r["official"] == "True" for r in rows):
        raise ProjectError(f"team {team!r} already has an official entry in {path}: "
                           "the test set is scored once per team")
    rows.append({"team": team, **{k: result[k] for k in LEADERBOARD_FIELDS if k in result},
                 "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                 "note": note})
    rows.sort(key=lambda r: (str(r["official"]) != "True", -float(r["score"])))
    with_fields = [{k: str(r.get(k, "")) for k in LEADERBOARD_FIELDS} for r in rows]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LEADERBOARD_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(with_fields)
    write_text(path, text.getvalue())
    write_text(os.path.splitext(path)[0] + ".md", leaderboard_markdown(with_fields))
    return with_fields


def leaderboard_markdown(rows) -> str:
    """The leaderboard as a Markdown table: official entries ranked, practice runs after them."""
    out = ["| rank | team | score | accuracy | budget | test images | dataset |",
           "|---|---|---|---|---|---|---|"]
    rank = 0
    for r in rows:
        official = str(r["official"]) == "True"
        rank += official
        out.append(f"| {rank if official else 'practice'} | {r['team']} | {float(r['score']):.4f} | "
                   f"{float(r['accuracy']):.4f} | {r['budget_value']} / {r['budget_limit']} | "
                   f"{r['test_images']} | {r['dataset']} |")
    return "\n".join(out) + "\n"
