"""Sphinx configuration of minicnn's site: the guide, the tutorials with their outputs, the API.

Build it from the repository root (the README says so):

    python -m sphinx -W --keep-going -c docs -b html . docs/_build/html

The source folder is the repository root, not docs/: README.md, the notebooks
in tutorials/ and benchmarks/README.md are rendered where they live, so every
link between them works on GitHub and on the site alike, and nothing is copied.
`include_patterns` below says which files are pages.

The tutorials are stored without outputs. myst-nb executes each one during the
build (a failing cell fails the build), in its own folder like a student would
run it; `MINICNN_DOCS_EXECUTE` picks myst-nb's mode: `cache` (the default: a
notebook is re-run only when its code changed), `force` (every build; what
tests/test_docs.py uses) or `off` (prose only, seconds).
"""
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))        # autodoc imports the checkout, installed or not

project = "minicnn"
author = "the minicnn authors"
copyright = "2026, the minicnn authors"

extensions = [
    "myst_nb",                       # Markdown pages and executed notebooks (brings myst_parser)
    "sphinx.ext.autodoc",            # the API reference from the docstrings
    "sphinx.ext.napoleon",           # "Args:" / "Returns:" sections
    "sphinx.ext.viewcode",           # every documented object links to its highlighted source
    "sphinx.ext.mathjax",            # the math in docstrings and notebooks
    "sphinx-mathjax-offline",        # ... with MathJax copied into the site, so it renders with no network
]

root_doc = "docs/index"
include_patterns = [
    "docs/**",
    "README.md",
    "tutorials/README.md",
    "tutorials/syllabus.md",
    "tutorials/[0-9][0-9]_*.ipynb",
    "projects/README.md",
    "projects/*/README.md",
    "benchmarks/README.md",
    "tests/README.md",
]
exclude_patterns = ["docs/_build", "docs/_build/**", "**/.ipynb_checkpoints"]
templates_path = ["_templates"]         # relative to docs/, the configuration folder
html_static_path = ["_static"]
html_theme = "furo"
html_title = "minicnn"
if os.environ.get("MINICNN_SITE_EDITION") == "student":   # `minicnn course build-site --student`
    html_title = "minicnn (student edition)"
# The site's index is docs/index.html (root_doc); index.html at the top sends a browser there.
html_additional_pages = {"index": "redirect.html"}

# --- MyST: the Markdown of README.md and the notebooks -----------------------
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3             # README's [Data](#data) links resolve to headings

# --- myst-nb: execute the tutorials ------------------------------------------
nb_execution_mode = os.environ.get("MINICNN_DOCS_EXECUTE", "cache")
if nb_execution_mode not in ("cache", "force", "off", "auto", "inline"):
    from sphinx.errors import ConfigError
    raise ConfigError(f"MINICNN_DOCS_EXECUTE: expected cache, force or off (or myst-nb's auto or inline), "
                     f"got {nb_execution_mode!r}")
nb_execution_timeout = 600           # seconds per cell; the slowest tutorial cell takes ~1 min on 2 cores
# A failing tutorial is a warning (-W: the build fails) with the cell's traceback,
# saved in <html>/reports/tutorials/NN_name.err.log; the build goes on with the
# others (raising would stop at the first), and tests/test_docs.py names each.
nb_execution_raise_on_error = False
nb_execution_show_tb = True
nb_execution_in_temp = False         # run in tutorials/, as `jupyter notebook` would
nb_execution_cache_path = str(ROOT / "docs" / "_build" / ".jupyter_cache")
nb_merge_streams = True

# Tutorials whose data a fresh machine may not have. The project's rule for full
# data: found through MINICNN_DATA_DIR (or the download cache, or downloaded,
# checksum-verified); where none of these works (no copy and no network), the
# tutorial is rendered without executing it, and the reason is written to
# <html>/reports/not_executed.json, from which tests/test_docs.py skips it.
NEEDS_DATA = {"tutorials/11_transfer_learning": "fashion-mnist"}


def _data_missing():
    """{docname: why it cannot run here} for the NEEDS_DATA tutorials."""
    if nb_execution_mode == "off":
        return {}
    from minicnn.data import DownloadError, get_dataset
    missing = {}
    for docname, dataset in NEEDS_DATA.items():
        try:
            for train in (True, False):
                get_dataset(dataset, train=train, download=True)
        except DownloadError as e:
            missing[docname] = f"{dataset} is not available here: {str(e).splitlines()[0]} (set MINICNN_DATA_DIR)"
    return missing


NOT_EXECUTED = _data_missing()
nb_execution_excludepatterns = [f"{docname}.ipynb" for docname in NOT_EXECUTED]
# Figures inline, whatever the environment says (MPLBACKEND=Agg, common in CI,
# would make plt.show() draw nothing and the pages lose their figures).
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

# --- autodoc -----------------------------------------------------------------
autodoc_mock_imports = ["cupy", "cupyx"]     # the GPU backend's module documents without a GPU
autodoc_member_order = "bysource"    # the order a student reads the file in
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = True


# --- links to the source: highlighted pages, not downloads -------------------
# The notebooks and README link to the code they explain, e.g.
# [tensor.py](../minicnn/autograd/tensor.py): right on GitHub, but Sphinx turns a link to
# a .py file into a download. On the site, send it to viewcode's highlighted
# copy of the module instead (whose objects link on to their API entries).
from docutils import nodes             # noqa: E402
from sphinx import addnodes            # noqa: E402


def _module_of(target):
    """'minicnn/nn/layers.py' -> 'minicnn.nn.layers'; 'kernels/geometry.py' -> 'minicnn.kernels.geometry'."""
    path = pathlib.PurePosixPath(target)
    parts = list(path.with_suffix("").parts)
    if path.suffix != ".py" or not parts or parts[0] not in ("minicnn", "kernels"):
        return None
    if parts[0] == "kernels":
        parts = ["minicnn"] + parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _source_links_to_viewcode(app, doctree, docname):
    if app.builder.format != "html":
        return
    py = app.env.domains["py"]
    with_source_page = {name.rsplit(".", 1)[0] for name, obj in py.objects.items() if obj.objtype != "module"}
    doc_folder = pathlib.PurePosixPath(docname).parent
    for ref in list(doctree.findall(addnodes.download_reference)):
        target = os.path.normpath(doc_folder / ref["reftarget"])
        module = _module_of(pathlib.PurePosixPath(target).as_posix())
        if module in with_source_page:         # a module: its highlighted source
            uri = app.builder.get_relative_uri(docname, "_modules/" + module.replace(".", "/"))
        elif module in py.modules:             # a package's __init__.py: its entry in the API reference
            entry = py.modules[module]
            uri = app.builder.get_relative_uri(docname, entry.docname) + "#" + entry.node_id
        else:
            continue                           # not minicnn's code: leave the download
        ref.replace_self(nodes.reference("", "", *ref.children, internal=True, refuri=uri))


def _build_slides(app):
    """Each tutorial as reveal.js slides in <html>/slides/ (from the stored notebooks: nothing runs).

    The syllabus links them; their cells' slide metadata is minicnn.course.slides'.
    """
    if app.builder.format != "html":
        return
    from minicnn.course.slides import build
    build(os.path.join(app.outdir, "slides"), str(ROOT / "tutorials"))


def _write_not_executed(app):
    import json
    reports = pathlib.Path(app.outdir) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "not_executed.json").write_text(json.dumps(NOT_EXECUTED, indent=1))


def setup(app):
    app.connect("doctree-resolved", _source_links_to_viewcode)
    app.connect("builder-inited", _write_not_executed)
    app.connect("builder-inited", _build_slides)
