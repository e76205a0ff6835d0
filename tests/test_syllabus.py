"""The course map (tutorials/course.toml), the pages generated from it, and the slides.

* every tutorial is in the map, every prerequisite is an earlier notebook (so no
  cycle), and each plan teaches every notebook once, after its prerequisites;
* the syllabus and the README table are what ``python -m minicnn.course.syllabus``
  writes today (no hand edit, no stale minutes), and the picture's layers put every
  prerequisite above the notebook that needs it;
* the slide metadata is what ``python -m minicnn.course.slides`` sets, and
  ``nbconvert --to slides`` turns a stored notebook into a deck whose slides start
  at its section headings.
"""
import copy
import json
import pathlib
import re

import pytest

from minicnn.course import slides, syllabus
from minicnn.course.notebooks import CourseError

ROOT = pathlib.Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"


@pytest.fixture(scope="module")
def course():
    return syllabus.load_map(str(TUTORIALS))


def test_every_tutorial_is_in_the_map(course):
    files = {nb["file"] for nb in course["notebook"]}
    missing = [p.name for p in sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb")) if p.name not in files]
    assert not missing, f"tutorials/course.toml has no entry for {missing}"


def test_prerequisites_are_earlier_notebooks_and_layers_respect_them(course):
    layer = syllabus.layers(course)
    for nb in course["notebook"]:
        for p in nb["prerequisites"]:
            assert int(p) < int(nb["number"]), f"{nb['number']} needs {p}, a later notebook"
            assert layer[p] < layer[nb["number"]], f"layer of {p} ({layer[p]}) not above {nb['number']}"
    assert layer["00"] == 0 and layer["01"] == 1 and layer["08"] > layer["07"] > layer["05"]


def test_a_cycle_or_a_later_prerequisite_is_refused(course):
    broken = copy.deepcopy(course)
    by_number = syllabus.notebooks_by_number(broken)
    by_number["02"]["prerequisites"] = ["08"]
    with pytest.raises(CourseError, match="prerequisite 08 is not an earlier notebook"):
        syllabus.check_map(broken)
    with pytest.raises(CourseError, match="cycle: 01 -> 02 -> 01"):      # layers() alone, a cycle
        by_number["01"]["prerequisites"] = ["02"]
        by_number["02"]["prerequisites"] = ["01"]
        syllabus.layers(broken)


def test_plans_teach_each_notebook_once_after_its_prerequisites(course):
    assert set(course["plans"]) == {"six-week", "twelve-week"}
    assert [len(p["weeks"]) for p in course["plans"].values()] == [6, 12]
    broken = copy.deepcopy(course)
    weeks = broken["plans"]["six-week"]["weeks"]
    weeks[0], weeks[2] = weeks[2], weeks[0]                     # 06-08 before 00-02
    with pytest.raises(CourseError, match="plan six-week, week 1: notebook 06 comes before"):
        syllabus.check_map(broken)
    broken = copy.deepcopy(course)
    broken["plans"]["twelve-week"]["weeks"][-1] = []             # week 12: no project
    broken["plans"]["twelve-week"]["weeks"][-2] = ["14"]
    with pytest.raises(CourseError, match=r"never teaches \['15'\]"):
        syllabus.check_map(broken)


def test_generated_pages_are_up_to_date():
    stale = syllabus.generate(str(TUTORIALS), check=True)
    assert not stale, f"out of date: {stale}; run python -m minicnn.course.syllabus"


def test_syllabus_page_lists_objectives_times_and_slides(course):
    text = (TUTORIALS / "syllabus.md").read_text()
    times = syllabus.load_times(str(TUTORIALS))
    for nb in course["notebook"]:
        assert f"### {nb['number']} {nb['title']}" in text
        assert all(o in text for o in nb["objectives"]), f"{nb['number']}: an objective is missing"
        if (TUTORIALS / nb["file"]).exists():
            assert f'<a href="../slides/{nb["file"][:-6]}.slides.html">slides</a>' in text
    measured = times["seconds"]
    if measured:                      # the minutes column is the measurement, rounded
        name, seconds = next(iter(measured.items()))
        nb = next(nb for nb in course["notebook"] if nb["file"] == name + ".ipynb")
        expected = "<1" if seconds < 60 else str(round(seconds / 60))
        assert f"run time: {expected} min" in text.split(f"### {nb['number']} ")[1].split("###")[0]


def test_dependency_picture_is_drawn_by_layers(course, tmp_path):
    pos = syllabus.draw_map(course, str(tmp_path / "map.png"))
    assert (tmp_path / "map.png").stat().st_size > 10_000
    layer = syllabus.layers(course)
    assert all(pos[n][1] == -layer[n] for n in pos)              # row = layer, top to bottom
    # 08 needs 02, 05, 06, 07; 07 already needs 05 and 06 (through 04 and 03 for 05): drawn once
    assert ("05", "08") in syllabus.implied(course) and ("07", "08") not in syllabus.implied(course)


def test_slide_types_follow_the_headings():
    md = lambda text: {"cell_type": "markdown", "source": text, "metadata": {}}
    code = lambda text: {"cell_type": "code", "source": text, "metadata": {}}
    assert slides.slide_type(md("# 00 — A tour\n\ntext")) == "slide"
    assert slides.slide_type(md("## 2. The data")) == "slide"
    assert slides.slide_type(md("### Exercise 1 — x")) == "subslide"
    assert slides.slide_type(md("Some prose with a # in it")) is None
    assert slides.slide_type(md("the end of section 1.\n\n## 2. Next")) == "slide"
    assert slides.slide_type(md("Run it:\n\n```\n# a shell comment\nminicnn train\n```")) is None
    assert slides.slide_type(code("x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION")) == "skip"
    assert slides.slide_type(code("assert y == 2")) is None


def test_slide_metadata_is_up_to_date_and_rewriting_keeps_the_json_style(tmp_path):
    assert slides.apply(str(TUTORIALS), check=True) == [], "run python -m minicnn.course.slides"
    for path in sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb")):
        raw = path.read_text(encoding="utf-8")
        assert slides.dumps_like(json.loads(raw), raw) == raw, f"{path.name} would be reformatted"


def test_nbconvert_builds_slides_that_start_at_the_headings(tmp_path):
    pytest.importorskip("nbconvert", reason="nbconvert comes with the docs extra: pip install -e '.[docs]'")
    folder = tmp_path / "t"
    folder.mkdir()
    src = TUTORIALS / "02_convolution.ipynb"
    (folder / src.name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    [out] = slides.build(str(tmp_path / "slides"), str(folder))
    html = pathlib.Path(out).read_text(encoding="utf-8")
    nb = json.loads(src.read_text(encoding="utf-8"))
    headings = [c for c in nb["cells"] if slides.slide_type(c) == "slide"]
    assert len(headings) >= 8
    # reveal.js: one outer <section> per slide, each holding its sub-slides' <section>s
    assert html.count("<section") >= len(headings)
    assert "### BEGIN SOLUTION" not in html, "a solution cell made it into the slides"
    assert re.search(r"Reveal\.initialize", html)


def test_each_part_has_a_scored_project_with_a_readme(course):
    from minicnn.course.projects import PROJECTS
    names = [part["project"] for part in course["parts"].values()]
    assert sorted(names) == sorted(PROJECTS), f"parts' projects {names} vs scored projects {sorted(PROJECTS)}"
    for name in names:
        readme = (ROOT / "projects" / name / "README.md").read_text()
        assert "Score" in readme and "evaluate.py" in readme, f"projects/{name}/README.md: say how it is scored"
