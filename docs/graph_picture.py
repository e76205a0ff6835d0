"""Draw the README's picture of the recorded graph: docs/_static/graph.svg.

One backward through the reference CNN (two images), then
``mc.autograd.draw_graph``: every Function with its output's shape and values,
every parameter by name with its gradient. Run from the repository root::

    python docs/graph_picture.py
"""
import pathlib

import numpy as np

import minicnn as mc
import minicnn.functional as F
from minicnn import models

HERE = pathlib.Path(__file__).resolve().parent


def main():
    mc.manual_seed(0)
    model = models.get_model("reference").eval()         # eval: no dropout, the graph as at test time
    x = mc.tensor(np.random.default_rng(0).standard_normal((2, 1, 28, 28)))
    loss = F.cross_entropy(model(x), mc.tensor(np.array([3, 7])))
    loss.backward()
    graph = mc.autograd.draw_graph(loss, params=dict(model.named_parameters()))
    path = graph.save(HERE / "_static" / "graph.svg")
    print(f"{graph} -> {path}")


if __name__ == "__main__":
    main()
