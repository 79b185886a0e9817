"""Shared links that point nowhere, through Streamlit's AppTest on the real tiny study: every URL
parameter the pages read, given a value the page cannot show, gives one warning that names the
value (capped, as code) and what is shown instead, and the page still draws; good links give none.
"""

from __future__ import annotations

import app_fixtures
import pytest
import streamlit as st
from app_fixtures import PAGES, open_page
from streamlit.testing.v1 import AppTest

from app import charts
from app.links import CAP, quoted

LONG = "x" * 30_000
DIGITS = "7" * 5_000


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> str:
    return app_fixtures.shared_databases(tmp_path_factory.getbasetemp() / "app-dbs")["study"]


@pytest.fixture(autouse=True)
def fresh_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def draws(at: AppTest, page: str) -> bool:
    """The page's main content is there: the Studies table, or the page's charts."""
    if page == "studies":
        return len(at.dataframe) >= 1
    least = {"live": 6, "pareto": 1, "parameters": 4, "trial": 4}[page]
    return len(at.get("plotly_chart")) >= least


# What each page shows instead, read from the widget the parameter is bound to.
def study_shown(at):
    return quoted(at.selectbox(key="study").value)


def trial_shown(at):
    return f"trial {at.selectbox(key='trial').value}"


def x_shown(at):
    return quoted(charts.label(at.radio(key="x").value))


def colour_shown(at):
    assert at.selectbox(key="color").value is None
    return "no colour"


def accuracy_shown(at):
    assert at.checkbox(key="test").value is False
    return "validation accuracy only"


def overlay_shown(at):
    kept = at.multiselect(key="overlay").value
    return "overlaying " + (", ".join(quoted(s) for s in kept) or "none")


def evaluator_shown(at):
    return quoted(at.radio(key="evaluator").value)


def slices_shown(at):
    return quoted(charts.label(at.radio(key="slices_of").value))


def compare_shown(at):
    labels = at.multiselect(key="compare").values  # as the widget writes them to the URL
    return "comparing with " + (", ".join(quoted(s) for s in labels) or "none")


BAD = [
    # (page, query, values the warning must name, what is shown instead)
    *[(page, {"study": "nosuch"}, ["nosuch"], study_shown) for page in PAGES],
    ("studies", {"study": LONG}, [LONG], study_shown),
    ("pareto", {"study": ""}, [""], study_shown),
    ("studies", {"study": ":red[alarm] **bold** [link](http://example.com)"},
     [":red[alarm] **bold** [link](http://example.com)"], study_shown),
    ("trial", {"trial": "999999"}, ["999999"], trial_shown),
    ("trial", {"trial": "abc"}, ["abc"], trial_shown),
    ("trial", {"trial": "-1"}, ["-1"], trial_shown),
    ("trial", {"trial": "1.5"}, ["1.5"], trial_shown),
    ("trial", {"trial": DIGITS}, [DIGITS], trial_shown),
    ("trial", {"trial": LONG}, [LONG], trial_shown),
    ("live", {"trial": "999999"}, ["999999"], trial_shown),
    ("live", {"trial": "abc"}, ["abc"], trial_shown),
    ("live", {"trial": "-3"}, ["-3"], trial_shown),
    ("live", {"trial": DIGITS}, [DIGITS], trial_shown),
    ("live", {"trial": "\uff12"}, ["\uff12"], trial_shown),  # a full-width 2: a digit, not ASCII
    ("live", {"trial": "2\nline"}, ["2\nline"], trial_shown),
    ("pareto", {"x": "garbage"}, ["garbage"], x_shown),
    ("pareto", {"x": "trainable_fraction"}, ["trainable_fraction"], x_shown),  # not its label
    ("pareto", {"x": LONG}, [LONG], x_shown),
    ("pareto", {"color": "garbage"}, ["garbage"], colour_shown),
    ("pareto", {"color": LONG}, [LONG], colour_shown),
    ("pareto", {"color": "val_acc"}, ["val_acc"], colour_shown),  # an objective, not a parameter
    ("pareto", {"test": "maybe"}, ["maybe"], accuracy_shown),
    ("pareto", {"overlay": "nosuch"}, ["nosuch"], overlay_shown),
    ("pareto", {"overlay": ["acc-only", "nosuch"]}, ["nosuch"], overlay_shown),
    ("pareto", {"overlay": ["tiny"]}, ["tiny"], overlay_shown),  # the study itself
    ("pareto", {"overlay": [f"gone-{i}" for i in range(5)]}, ["gone-0", "gone-1", "gone-2"],
     overlay_shown),
    ("parameters", {"evaluator": "nope"}, ["nope"], evaluator_shown),
    ("parameters", {"evaluator": LONG}, [LONG], evaluator_shown),
    ("parameters", {"slices_of": "garbage"}, ["garbage"], slices_shown),
    ("trial", {"compare": "zzz"}, ["zzz"], compare_shown),
    ("trial", {"compare": ["zzz", "999999"]}, ["zzz", "999999"], compare_shown),
]  # fmt: skip


@pytest.mark.parametrize(("page", "query", "named", "shown"), BAD)
def test_a_link_to_nowhere_says_what_it_shows_instead(
    monkeypatch, study, page, query, named, shown
):
    at = open_page(monkeypatch, study, page, **query)
    assert not at.exception, at.exception
    assert not at.error
    assert len(at.warning) == 1, [w.value for w in at.warning]
    text = at.warning[0].value
    for value in named:
        assert quoted(value) in text
    assert f"{shown(at)} instead." in text
    assert "\n" not in text
    assert len(text) < 2 * CAP + 200  # a 30,000-character value is not repeated back
    assert draws(at, page)


def test_more_than_three_bad_values_are_counted_not_listed(monkeypatch, study):
    at = open_page(monkeypatch, study, "pareto", overlay=[f"gone-{i}" for i in range(5)])
    assert "`gone-0`, `gone-1`, `gone-2` and 2 more are not another" in at.warning[0].value


GOOD = [
    ("studies", {"study": "tiny"}),
    ("studies", {"study": "acc-only"}),
    ("trial", {"trial": "1"}),
    ("trial", {"trial": "1", "compare": "3 · oialr"}),  # what a link written while 3 ran holds
    ("live", {"trial": "5"}),
    ("pareto", {"x": "stored fraction", "test": "true", "overlay": "acc-only"}),
    ("pareto", {"color": "sigma cutoff"}),
    ("parameters", {"evaluator": "ped-anova", "slices_of": "trainable fraction"}),
    *[(page, {}) for page in PAGES],
]


@pytest.mark.parametrize(("page", "query"), GOOD)
def test_a_good_link_gives_no_warning(monkeypatch, study, page, query):
    at = open_page(monkeypatch, study, page, **query)
    assert not at.exception, at.exception
    assert not at.warning, [w.value for w in at.warning]
    assert draws(at, page)
    for key, value in query.items():
        if key == "study":
            assert at.selectbox(key="study").value == value
        elif key == "trial":
            assert at.selectbox(key="trial").value == int(value)
        elif key == "compare":
            assert at.multiselect(key="compare").value == [3]


def test_two_bad_parameters_share_one_warning(monkeypatch, study):
    at = open_page(monkeypatch, study, "pareto", study="nosuch", color="garbage")
    assert len(at.warning) == 1
    text = at.warning[0].value
    assert text.index("Study `nosuch`") < text.index("Colour `garbage`")


def test_values_are_capped_kept_on_one_line_and_shown_as_code():
    assert quoted("nosuch") == "`nosuch`"
    assert quoted(LONG) == "`" + "x" * (CAP - 1) + "…`"
    assert quoted("[a](http://b)") == "`[a](http://b)`"
    assert quoted("a`b ``c") == "```a`b ``c```"  # a fence longer than any run inside
    assert quoted("`x") == "`` `x ``"
    assert quoted("a\nb\tc") == "`a\N{REPLACEMENT CHARACTER}b\N{REPLACEMENT CHARACTER}c`"
    assert quoted("") == "(empty)"
