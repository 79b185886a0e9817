"""Shared links that ask for what the app cannot show.

Every widget bound to the URL (``bind="query-params"``) quietly drops a value that is not one of
its options and shows its default. Before such a widget is drawn, its page hands the options to
:meth:`Links.check` (or :meth:`Links.check_all` for a multiselect), which names the value the
link asked for and what is shown instead, all in one ``st.warning`` at the top of the page.
Values are shown capped at ``CAP`` characters, as inline code: Markdown renders none of a link's
text as a link, a colour or a formula (escaping would not stop GFM turning ``http://…`` into a
link).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

import streamlit as st

CAP = 80  # characters of a URL value shown in a warning
_DIGITS = 18  # a longer number is no trial or run (and int() of 5,000 digits fails)


def quoted(value: str) -> str:
    """``value`` as a warning shows it: capped, on one line, as a Markdown code span."""
    if not value:
        return "(empty)"
    text = "".join(c if c.isprintable() else "\N{REPLACEMENT CHARACTER}" for c in value)
    if len(text) > CAP:
        text = text[: CAP - 1] + "…"
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    if text[0] in " `" or text[-1] in " `":
        text = f" {text} "  # one space each side is stripped: the value's own are kept
    return fence + text + fence


def url_number(value: str | None) -> int | None:
    """A trial number or run id from the URL, or None where ``value`` is not one."""
    if value and value.isascii() and value.isdigit() and len(value) <= _DIGITS:
        return int(value)
    return None


def _listed(values: Sequence[str], most: int = 3) -> str:
    """`a`, `b`, `c` and 2 more; or none."""
    if not values:
        return "none"
    text = ", ".join(quoted(v) for v in values[:most])
    return text + (f" and {len(values) - most:,} more" if len(values) > most else "")


class Links:
    """What this run's URL asked for and could not get, said in one warning line. Create it
    where the warning should appear (the top of the page), before any page draws."""

    def __init__(self) -> None:
        self._slot = st.empty()
        self._said: list[str] = []

    def check(
        self,
        key: str,
        labels: Collection[str],
        *,
        what: str,
        where: str,
        instead: str,
        case_sensitive: bool = True,
    ) -> None:
        """Warns when the URL has ``key`` and its value is none of ``labels`` (the options of the
        widget bound to ``key``, as that widget writes them to the URL): "{what} `value` is not
        {where}: showing {instead} instead." """
        if key not in st.query_params:
            return
        value = st.query_params[key]
        if (value if case_sensitive else value.lower()) not in labels:
            self._say(f"{what} {quoted(value)} is not {where}: showing {instead} instead.")

    def check_all(
        self,
        key: str,
        labels: Collection[str],
        *,
        what: tuple[str, str],
        where: str,
        doing: str,
        default: Sequence[str],
    ) -> None:
        """The same for a multiselect: names the values of ``key`` that are none of ``labels``
        (``what`` is the noun, singular and plural) and what is shown instead: the other values,
        or the widget's ``default`` where none is left ("{doing} `a`, `b` instead")."""
        values = st.query_params.get_all(key)
        bad = [v for v in values if v not in labels]
        if not bad:
            return
        kept = [v for v in values if v in labels] or list(default)
        noun, verb = (what[0], "is") if len(bad) == 1 else (what[1], "are")
        self._say(f"{noun} {_listed(bad)} {verb} not {where}: {doing} {_listed(kept)} instead.")

    def _say(self, sentence: str) -> None:
        self._said.append(sentence)
        self._slot.warning(" ".join(self._said), icon=":material/link_off:")
