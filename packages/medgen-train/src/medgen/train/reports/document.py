"""A report as a list of blocks (headings, text, lists, tables, figures) that renders to
Markdown (``report.md``) and to one self-contained HTML file (``report.html``) from the same
calls, so the two never disagree.

Text may hold inline code in backticks (```name```); everything else is plain text: the
HTML renderer escapes it, the Markdown renderer escapes table cell separators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    """A section title (level 1 is the document's title)."""

    text: str
    level: int = 2


@dataclass
class Text:
    """A paragraph."""

    text: str


@dataclass
class Items:
    """A bulleted list."""

    items: list[str]


@dataclass
class Table:
    """A table of strings: ``head`` names the columns, each row has one cell per column."""

    head: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    """A PNG: ``path`` is the file (embedded in HTML), ``href`` how Markdown links it."""

    path: Path
    caption: str
    href: str


@dataclass
class Document:
    """A titled report built block by block."""

    title: str
    blocks: list = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        """Start a section."""
        self.blocks.append(Heading(text, level))

    def text(self, text: str) -> None:
        """Add a paragraph."""
        self.blocks.append(Text(text))

    def items(self, items: list[str]) -> None:
        """Add a bulleted list."""
        self.blocks.append(Items(list(items)))

    def table(self, head: list[str], rows: list[list[str]]) -> None:
        """Add a table; every row must have one cell per column."""
        for row in rows:
            if len(row) != len(head):
                raise ValueError(f"table row {row} has {len(row)} cells for {len(head)} columns")
        self.blocks.append(Table(list(head), [list(r) for r in rows]))

    def figure(self, path: str | Path, caption: str, href: str | None = None) -> None:
        """Add a PNG figure (``href``: its Markdown link, default the file name)."""
        path = Path(path)
        self.blocks.append(Figure(path, caption, href if href is not None else path.name))

    def extend(self, blocks: list) -> None:
        """Append blocks built elsewhere."""
        self.blocks.extend(blocks)

    def markdown(self) -> str:
        """The document as Markdown."""
        return render_markdown(self.title, self.blocks)

    def html(self) -> str:
        """The document as one self-contained HTML5 page (figures embedded)."""
        from medgen.train.reports.html import render_html

        return render_html(self.title, self.blocks)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, blocks: list) -> str:
    """Markdown of ``blocks`` under ``# title``."""
    lines = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            lines += [f"{'#' * b.level} {b.text}", ""]
        elif isinstance(b, Text):
            lines += [b.text, ""]
        elif isinstance(b, Items):
            lines += [*(f"- {item}" for item in b.items), ""]
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(map(_cell, b.head)) + " |")
            lines.append("|---" * len(b.head) + "|")
            lines += ["| " + " | ".join(map(_cell, r)) + " |" for r in b.rows]
            lines.append("")
        elif isinstance(b, Figure):
            lines += [f"![{b.caption}]({b.href})", ""]
        else:
            raise TypeError(f"not a report block: {b!r}")
    return "\n".join(lines)
