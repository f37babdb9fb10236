"""One self-contained HTML5 page from report blocks: inline CSS, every figure embedded as a
base64 PNG ``data:`` URI, no script and no external URL of any kind, every string escaped.
Readable at a laptop width (figures sit side by side where they fit and scale down where they
do not, wide tables scroll) and printable (figures and tables are not split across pages)."""

from __future__ import annotations

import base64
import html
import re
import struct
from pathlib import Path

from medgen.train.errors import MedGenError
from medgen.train.reports.document import Figure, Heading, Items, Table, Text

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_WIDTH = 240  # pixels: smaller figures (a tiny run's image grids) are shown enlarged
CODE = re.compile(r"`([^`]+)`")

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       max-width: 1100px; margin: 1.5em auto; padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #eee; }
h3 { font-size: 1.05em; }
code { font: .9em ui-monospace, "DejaVu Sans Mono", monospace; background: #f3f3f5;
       padding: 0 .25em; border-radius: 3px; overflow-wrap: anywhere; }
.table { overflow-x: auto; margin: .6em 0 1em; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border: 1px solid #d5d5da; padding: .25em .6em; text-align: left;
         vertical-align: top; }
th { background: #f3f3f5; }
tbody tr:nth-child(even) { background: #fafafb; }
figure { display: inline-block; vertical-align: top; margin: .6em 1.2em .6em 0;
         max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figure img.small { image-rendering: pixelated; }
figcaption { font-size: .85em; color: #555; }
@media print {
  body { max-width: none; margin: 0; font-size: 11pt; }
  figure, table, tr { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  .table { overflow: visible; }
}
""".strip()


class ReportError(MedGenError):
    """A report cannot be written: a figure is missing or is not a PNG."""


def inline(text: str) -> str:
    """``text`` escaped for HTML, with ```code``` spans as ``<code>``."""
    return CODE.sub(r"<code>\1</code>", html.escape(str(text), quote=True))


def read_png(path: str | Path) -> tuple[bytes, int, int]:
    """The bytes, width and height of the PNG file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: figure missing; the report cannot embed it")
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ReportError(f"{path}: not a PNG file; the report embeds PNG figures only")
    width, height = struct.unpack(">II", data[16:24])
    return data, width, height


def png_data_uri(data: bytes) -> str:
    """PNG bytes as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(b: Figure) -> str:
    data, width, height = read_png(b.path)
    scale = -(-MIN_WIDTH // width) if width < MIN_WIDTH else 1  # small images: whole multiples
    cls = ' class="small"' if scale > 1 else ""
    alt = html.escape(b.caption, quote=True)
    return (f'<img src="{png_data_uri(data)}" alt="{alt}" width="{width * scale}" '
            f'height="{height * scale}"{cls}>')  # fmt: skip


def _block(b) -> list[str]:
    if isinstance(b, Heading):
        level = min(max(b.level, 1), 6)
        return [f"<h{level}>{inline(b.text)}</h{level}>"]
    if isinstance(b, Text):
        return [f"<p>{inline(b.text)}</p>"]
    if isinstance(b, Items):
        return ["<ul>", *(f"<li>{inline(i)}</li>" for i in b.items), "</ul>"]
    if isinstance(b, Table):
        head = "".join(f'<th scope="col">{inline(h)}</th>' for h in b.head)
        rows = ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in b.rows]
        return ['<div class="table"><table>', f"<thead><tr>{head}</tr></thead>", "<tbody>",
                *rows, "</tbody>", "</table></div>"]  # fmt: skip
    if isinstance(b, Figure):
        return [f"<figure>{_img(b)}", f"<figcaption>{inline(b.caption)}</figcaption></figure>"]
    raise TypeError(f"not a report block: {b!r}")


def render_html(title: str, blocks: list) -> str:
    """The whole page: ``title`` as ``<title>`` and ``<h1>``, then the blocks."""
    body = [line for b in blocks for line in _block(b)]
    t = html.escape(title)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{t}</title>",
            f"<style>\n{CSS}\n</style>",
            "</head>",
            "<body>",
            f"<h1>{t}</h1>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )
