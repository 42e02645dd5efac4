"""The report as one self-contained HTML page: its tables styled, its figures embedded.

The page needs no file beside it (the figures are PNG data URLs), reads in a browser
and on paper (a print style sheet), and shows at a glance what a reader comes for: each
verdict as a coloured word (gain, loss, negligible, undecided), the blog's own models
and the chance level marked in the configurations table.

Example:
    >>> import pandas as pd
    >>> frame = pd.DataFrame([{"factor": "augment", "verdict": "gain"}])
    >>> page = html_page("Study", "One line.", [Block("Ablation", frame=frame)])
    >>> '<span class="verdict gain">gain</span>' in page
    True
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

VERDICT_COLUMN = "verdict"  # cells that start with a verdict word get its colour
BLOG_COLUMN = "blog"  # rows with a value here are the blog's models
CHANCE_PREFIX = "chance"  # a first cell starting so is the chance level's row
VERDICTS = ("gain", "loss", "negligible", "undecided")

STYLE = """
:root { --gain: #1a7f37; --loss: #c62828; --negligible: #57606a; --undecided: #9a6700; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       max-width: 100rem; margin: 2rem auto; padding: 0 1.5rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; }
p.headline { font-size: 1.05rem; color: #424a53; }
p.note, ul.notes { color: #57606a; font-size: .9rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .88rem;
        font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid #d8dee4; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.long { min-width: 18rem; }
tr.blog td { background: #ddf4ff; }
tr.blog td:first-child { font-weight: 600; }
tr.chance td { color: #57606a; font-style: italic; border-top: 2px solid #8c959f; }
.verdict { font-weight: 700; padding: .05rem .4rem; border-radius: .8rem; color: white;
           white-space: nowrap; }
.verdict.gain { background: var(--gain); }
.verdict.loss { background: var(--loss); }
.verdict.negligible { background: var(--negligible); }
.verdict.undecided { background: var(--undecided); }
.wide { overflow-x: auto; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d8dee4; }
figcaption { color: #57606a; font-size: .85rem; }
.legend span { margin-right: 1rem; }
@media print {
  body { max-width: none; margin: 0; font-size: 10pt; }
  h2 { break-after: avoid; }
  table, figure { break-inside: avoid; }
  .wide { overflow: visible; }
  table { font-size: 7.5pt; }
  tr.blog td { background: #ddf4ff !important; }
  .verdict { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


@dataclass
class Block:
    """One section of the page: a heading, then a table, notes and figures, any of them."""

    heading: str
    frame: pd.DataFrame | None = None
    notes: Sequence[str] = ()
    figures: Sequence[tuple[str, str, bytes]] = field(default_factory=list)  # name, caption, PNG


def html_page(title: str, headline: str, blocks: Sequence[Block]) -> str:
    """The whole page as text (see the module's docstring)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="headline">{html.escape(headline)}</p>',
        _legend(),
    ]
    for block in blocks:
        parts.append(f"<section><h2>{html.escape(block.heading)}</h2>")
        if block.frame is not None and not block.frame.empty:
            parts.append(table(block.frame))
        if block.notes:
            items = "".join(f"<li>{html.escape(note)}</li>" for note in block.notes)
            parts.append(f'<ul class="notes">{items}</ul>')
        for name, caption, png in block.figures:
            parts.append(figure(name, caption, png))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def table(frame: pd.DataFrame) -> str:
    """A frame as an HTML table: cells escaped, verdicts coloured, blog and chance rows marked."""
    columns = list(frame.columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    long = {c for c in columns if frame[c].astype(str).str.len().max() > 40}  # sentences
    rows = []
    for values in frame.itertuples(index=False):
        cells = dict(zip(columns, values, strict=True))
        classes = []
        if str(cells.get(BLOG_COLUMN) or "").strip():
            classes.append("blog")
        if str(values[0]).startswith(CHANCE_PREFIX):
            classes.append("chance")
        row_class = f' class="{" ".join(classes)}"' if classes else ""
        body = "".join(
            ('<td class="long">' if column in long else "<td>")
            + _cell(column, cells[column])
            + "</td>"
            for column in columns
        )
        rows.append(f"<tr{row_class}>{body}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="wide">{table}</div>'  # scrolls sideways on a narrow screen


def figure(name: str, caption: str, png: bytes) -> str:
    """A PNG embedded as a data URL, with its caption (``name``: its file's, as data-figure)."""
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(caption, quote=True)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}" '
        f'data-figure="{html.escape(name, quote=True)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _cell(column: str, value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):  # NaN
        return "—"
    text = html.escape(str(value))
    if column == VERDICT_COLUMN or column.startswith(VERDICT_COLUMN + " "):
        for word in VERDICTS:
            if text == word or text.startswith(word + " ") or text.startswith(word + ":"):
                badge = f'<span class="verdict {word}">{word}</span>'
                return badge + text[len(word) :]
    return text


def _legend() -> str:
    words = "".join(f'<span><span class="verdict {w}">{w}</span></span>' for w in VERDICTS)
    return (
        f'<p class="legend note">{words} Blue rows are the blog\'s own models; the '
        "italic row is the chance level (always guessing the test set's majority class).</p>"
    )
