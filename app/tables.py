"""Small tables as Markdown, numbers formatted (:func:`app.charts.number`).

A key/value list or a side-by-side comparison of a few trials reads better as a plain table
than as a data grid, and costs the browser nothing: each ``st.dataframe`` is a canvas grid with
its own layout pass, where a Markdown table is a few DOM nodes.
"""

from __future__ import annotations

import pandas as pd

from app.charts import number


def _cell(value: object) -> str:
    return number(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, corner: str = "") -> str:
    """``frame`` (its index as the first column, headed ``corner``) as a Markdown table.

    >>> print(markdown_table(pd.DataFrame({"value": [0.012537, 3.0]}, index=["lr", "n"])))
    | | value |
    |---|---|
    | lr | 0.01254 |
    | n | 3 |
    """
    header = "| " + " | ".join([corner, *(_cell(c) for c in frame.columns)]).strip() + " |"
    lines = [header, "|" + "---|" * (len(frame.columns) + 1)]
    for label, row in frame.iterrows():
        lines.append("| " + " | ".join([_cell(label), *(_cell(v) for v in row)]) + " |")
    return "\n".join(lines)
