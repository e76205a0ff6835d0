"""The site (docs/): Sphinx + myst-nb build it with warnings as errors, executing every tutorial once.

This is where the tutorials run in the test suite: the build executes each
notebook top to bottom in tutorials/ (as a student would run it), so their
self-checks, figures and numbers are tested and rendered in one pass (this
replaced pytest's nbmake run, which executed them a second time).

One build per test session (about 4 minutes on 2 cores, nearly all of it the
notebooks); the tests below then read what it left:

* the build itself: no warning at all (a broken link, a docstring that is not
  valid reStructuredText, a notebook that failed), listed in the failure;
* one test per tutorial: it executed without an error (the failing cell's
  traceback is the failure message) and its page shows its outputs — skipped,
  with the reason, for a tutorial whose full data is neither in MINICNN_DATA_DIR
  nor in the cache nor downloadable here (11: Fashion-MNIST);
* the API reference documents the public classes, with their source pages;
* the course pages: the syllabus with its picture, the projects, a slide deck per tutorial.

One notebook alone, without building the site: ``jupyter execute tutorials/02_convolution.ipynb``.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("myst_nb", reason="the docs extra is not installed: pip install -e '.[docs]'")

ROOT = pathlib.Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the site once, from scratch, executing every notebook; return (returncode, log, html folder)."""
    out = tmp_path_factory.mktemp("site")
    html = out / "html"
    env = dict(os.environ, MINICNN_DOCS_EXECUTE="force")
    cmd = [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q",
           "-c", str(ROOT / "docs"), "-b", "html", str(ROOT), str(html),
           "-d", str(out / "doctrees")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    (out / "build.log").write_text(log)
    return proc.returncode, log, html


def _problems(log):
    """The build's warnings and errors: an entry per line that starts one, with its indented continuation."""
    entries, current = [], None
    for line in log.splitlines():
        if line[:1].isspace() and current is not None:
            current.append(line)                    # a traceback or a message's second line
            continue
        current = None
        if re.search(r": (WARNING|ERROR|CRITICAL):", line) or line.startswith(("WARNING:", "ERROR:")):
            current = [line]
            entries.append(current)
    return ["\n".join(e) for e in entries]


def test_the_site_builds_with_warnings_as_errors(site):
    returncode, log, html = site
    problems = _problems(log)
    assert returncode == 0 and not problems, (
        f"sphinx -W exited with {returncode}; {len(problems)} warning(s):\n\n"
        + "\n\n".join(p[:3000] for p in problems[:20]) + ("" if problems else "\n\n" + log[-5000:]))
    assert (html / "docs" / "index.html").is_file() and (html / "index.html").is_file()


@pytest.mark.parametrize("notebook", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs_and_its_page_shows_the_outputs(site, notebook):
    _, _, html = site
    docname = f"tutorials/{notebook.stem}"
    not_executed = json.loads((html / "reports" / "not_executed.json").read_text())
    if docname in not_executed:                  # its full data is not here (docs/conf.py: NEEDS_DATA)
        pytest.skip(not_executed[docname])
    report = html / "reports" / f"{docname}.err.log"
    assert not report.exists(), f"{notebook.name} failed while the site was built:\n{report.read_text()[-6000:]}"
    page = html / f"{docname}.html"
    assert page.is_file(), f"the build wrote no page for {notebook.name} (expected {page})"
    text = page.read_text()
    outputs = text.count('class="cell_output')
    assert outputs >= 3, f"{page.name} shows {outputs} cell outputs: was {notebook.name} executed?"
    assert re.search(r'<img [^>]*src="[^"]*_images/', text), f"{page.name} shows no figure"


def test_api_reference_documents_the_public_classes_with_their_source(site):
    _, _, html = site
    api = {p.stem: p.read_text() for p in (html / "docs" / "api").glob("*.html")}
    expected = {"core": ["minicnn.autograd.tensor.Tensor", "minicnn.autograd.tensor.Function", "minicnn.autograd.gradcheck.gradcheck"],
                "functional": ["minicnn.functional.conv.Conv2dFn", "minicnn.functional.conv.conv2d"],
                "nn": ["minicnn.nn.layers.Conv2d", "minicnn.nn.module.Module"],
                "optim": ["minicnn.optim.adam.Adam"],
                "kernels": ["minicnn.kernels.numpy_ref.im2col", "minicnn.kernels.cupy_gpu.im2col"],
                "techniques": ["minicnn.tune.lr_range.lr_find", "minicnn.attacks.fgsm_pgd.fgsm"]}
    missing = [f"{page}: {name}" for page, names in expected.items() for name in names
               if f'id="{name}"' not in api.get(page, "")]
    assert not missing, f"the API reference lacks {missing}"
    assert (html / "_modules" / "minicnn" / "autograd" / "tensor.html").is_file(), "viewcode wrote no source page for tensor.py"


def test_links_to_the_source_open_its_highlighted_page(site):
    """[tensor.py](../minicnn/autograd/tensor.py) in a notebook is a download in plain Sphinx; docs/conf.py sends it to viewcode."""
    _, _, html = site
    page = (html / "tutorials" / "01_autograd.html").read_text()
    assert 'href="../_modules/minicnn/autograd/tensor.html"' in page, "01_autograd's link to tensor.py should open the source page"
    assert "_downloads/" not in re.sub(r'href="[^"]*\.(png|json|csv|zip)"', "", page), \
        "a link to a module's source still downloads the file"


def test_the_course_pages_and_the_slides_are_built(site):
    """The syllabus (with the dependency picture), the projects, and one slide deck per tutorial."""
    _, _, html = site
    syllabus = (html / "tutorials" / "syllabus.html").read_text()
    assert re.search(r'<img [^>]*src="[^"]*_images/course_map\.png"', syllabus), "the syllabus lost its picture"
    assert (html / "projects" / "README.html").is_file() and (html / "projects" / "robust-mnist" / "README.html").is_file()
    missing = [p.name for p in TUTORIALS if not (html / "slides" / f"{p.stem}.slides.html").is_file()]
    assert not missing, f"no slides built for {missing}"
    for p in TUTORIALS:
        assert f'href="../slides/{p.stem}.slides.html"' in syllabus, f"the syllabus does not link {p.stem}'s slides"
