"""HTML assembly: one self-contained file per report, plotly.js embedded once, works offline."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

__all__ = ["Section", "render_html", "write_html", "html_table"]


@dataclass
class Section:
    """One section of a report: a heading, an optional figure, and explanatory text (HTML)."""

    title: str
    figure: go.Figure | None = None
    text: str = ""
    """HTML shown above the figure (escape user data with :func:`html.escape`)."""
    anchor: str = field(default="")


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif;
       margin: 0; color: #222; background: #fafafa; }
header { background: #1d2b3a; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 24px; }
header .sub { color: #c9d6e3; font-size: 14px; }
main { max-width: 1280px; margin: 0 auto; padding: 12px 24px 48px; }
section { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; margin: 18px 0; padding: 12px 18px; }
section h2 { font-size: 18px; margin: 6px 0 8px 0; }
nav { font-size: 13px; margin: 10px 0; }
nav a { margin-right: 14px; color: #1d5fa8; text-decoration: none; }
table.kv { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
table.kv td, table.kv th { border-bottom: 1px solid #eee; padding: 3px 10px 3px 0;
                           text-align: left; vertical-align: top; }
table.kv th { color: #555; font-weight: 600; }
.phase { display: inline-block; padding: 2px 10px; border-radius: 12px; color: #fff; font-weight: 600; }
.grid { display: flex; flex-wrap: wrap; gap: 28px; }
.summary { font-size: 15px; margin: 8px 0; }
details { font-size: 13px; margin: 8px 0; }
pre { background: #f4f4f4; padding: 8px; overflow-x: auto; font-size: 12px; }
.note { color: #666; font-size: 13px; }
"""


def html_table(rows: Mapping[str, Any] | Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """A small escaped key/value (or row) table."""
    out = ['<table class="kv">']
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    items = rows.items() if isinstance(rows, Mapping) else rows
    for row in items:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def render_html(title: str, sections: Sequence[Section], *, header_html: str = "", subtitle: str = "") -> str:
    """The report as one HTML string: plotly.js inlined once in the head, then every figure as a
    div plus a small script that draws it (frames included), so the file needs no network."""
    from plotly.offline import get_plotlyjs

    body: list[str] = []
    nav = []
    for i, sec in enumerate(sections):
        anchor = sec.anchor or f"section-{i}"
        nav.append(f'<a href="#{anchor}">{html.escape(sec.title)}</a>')
        body.append(f'<section id="{anchor}"><h2>{html.escape(sec.title)}</h2>')
        if sec.text:
            body.append(f'<div class="note">{sec.text}</div>')
        if sec.figure is not None:
            body.append(
                sec.figure.to_html(
                    full_html=False,
                    include_plotlyjs=False,
                    include_mathjax=False,
                    div_id=f"fig-{anchor}",
                    auto_play=False,
                    default_width="100%",
                    default_height=f"{int(sec.figure.layout.height or 500)}px",
                    config={"displaylogo": False, "responsive": True},
                )
            )
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f'<header><h1>{html.escape(title)}</h1><div class="sub">{html.escape(subtitle)}</div></header>'
        f"<main>{header_html}<nav>{''.join(nav)}</nav>{''.join(body)}</main></body></html>\n"
    )


def write_html(
    path: str | Path, title: str, sections: Sequence[Section], *, header_html: str = "", subtitle: str = ""
) -> Path:
    """Render and write the report atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_public(path, render_html(title, sections, header_html=header_html, subtitle=subtitle).encode("utf-8"))
    return path


def write_public(path: Path, data: bytes) -> None:
    """Atomic write with the usual file mode: the atomic write's temporary file is private (0600),
    but a report is meant to be opened and shared."""
    from ..store import atomic_write_bytes

    atomic_write_bytes(path, data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
