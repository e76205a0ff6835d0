"""The tutorials' house rules (their execution is the docs build's, in tests/test_docs.py).

Notebooks are stored with outputs stripped: small, reviewable diffs, and no
stale numbers that disagree with what the code prints today. Each one must
have a self-check a student can fail, a figure, and a link to the source it
explains.
"""
import json
import pathlib
import re

import pytest

TUTORIALS = sorted((pathlib.Path(__file__).parent.parent / "tutorials").glob("*.ipynb"))


def test_the_numbered_set_is_complete_and_listed():
    numbers = [p.name[:2] for p in TUTORIALS]
    assert numbers == [f"{i:02d}" for i in range(len(numbers))], \
        f"expected tutorials numbered 00..{len(numbers) - 1:02d} without gaps or repeats, found {numbers}"
    index = (pathlib.Path(__file__).parent.parent / "tutorials" / "README.md").read_text()
    missing = [p.name for p in TUTORIALS if f"({p.name})" not in index]
    assert not missing, f"tutorials/README.md does not link {missing}"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_follows_the_rules(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    text = "\n".join("".join(c["source"]) for c in nb["cells"])
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, (f"{path.name}: code cells {dirty} have stored outputs; strip them "
                       "(jupyter nbconvert --clear-output --inplace) before committing")
    assert re.search(r"^\s*assert ", "\n".join("".join(c["source"]) for c in code), re.M), \
        f"{path.name} needs a self-check (an assert with a message)"
    assert re.search(r"plt\.|plot_|imshow|display\(", text), f"{path.name} needs at least one figure"
    assert re.search(r"\]\(\.\./(minicnn|kernels)/", text), \
        f"{path.name} should link to the minicnn source it explains, e.g. [tensor.py](../minicnn/autograd/tensor.py)"
