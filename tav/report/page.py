"""The report's HTML: one static page per gallery page (``index.html`` first, then ``page-2.html``...), with its
style and script inline, so it opens from the file system with no network.

A gallery row is one sample: the caption, the seed, a play button that starts every video of the row together
(the first one carries the sound, the others are muted and follow its clock), and the per-sample scores. Videos
load when they scroll into view (``data-src`` set as ``src`` by an ``IntersectionObserver``).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{margin:0 0 .3em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff3cd;border:1px solid #e0c36c;padding:.4em .8em;margin:.3em 0}
.apart{opacity:.75}
.sample{background:#fff;border:1px solid #ddd;margin:.6em 0;padding:.5em}
.videos{display:flex;gap:1em;flex-wrap:wrap}
figure{margin:0}figcaption{font-size:12px;color:#555}
video{width:160px;height:160px;background:#000;image-rendering:pixelated}
.bad{width:160px;height:160px;background:#fee;color:#900;font-size:11px;overflow:auto;word-break:break-all}
.caption{font-style:italic;margin:.2em 0}
nav a{margin-right:.6em}
img.plot{max-width:100%;background:#fff;border:1px solid #ddd;margin:.3em 0}
"""

SCRIPT = """
(function(){
  function load(v){ if(!v.getAttribute('src')){ v.src=v.dataset.src; v.preload='auto'; } }
  var vids=document.querySelectorAll('video[data-src]');
  if('IntersectionObserver' in window){
    var io=new IntersectionObserver(function(es){ es.forEach(function(e){
      if(e.isIntersecting){ load(e.target); io.unobserve(e.target); } }); }, {rootMargin:'400px'});
    vids.forEach(function(v){ io.observe(v); });
  } else { vids.forEach(load); }
  document.querySelectorAll('button.play').forEach(function(b){
    b.addEventListener('click', function(){
      var vs=Array.prototype.slice.call(b.closest('.sample').querySelectorAll('video'));
      if(!vs.length) return;
      vs.forEach(function(v){ load(v); v.currentTime=0; });
      var lead=vs[0];
      lead.ontimeupdate=function(){ vs.slice(1).forEach(function(v){
        if(!v.ended && Math.abs(v.currentTime-lead.currentTime)>0.1) v.currentTime=lead.currentTime; }); };
      vs.forEach(function(v){ var p=v.play(); if(p && p.catch) p.catch(function(){}); });
    });
  });
})();
"""


@dataclass
class Cell:
    """One video of a gallery row: its label, the page-relative file (``None``: shown as ``reason``)."""

    label: str
    src: str | None
    reason: str | None = None
    muted: bool = True
    duration: float = 0.0


@dataclass
class Row:
    """One gallery row."""

    key: str
    caption: str | None
    seed: int | None
    cells: list[Cell]
    scores: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # (video label, {score: value})


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object) -> str:
    """Numbers with 4 significant digits (the metrics table and scores), the rest as text."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return esc(value)


def table(head: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "") -> str:
    """An HTML table; numeric cells get class ``num``; cells are escaped unless given as ``Raw``."""
    out = [f'<table class="{esc(cls)}"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for row in rows:
        if len(row) == 1 and isinstance(row[0], Raw):  # a note across the table
            out.append(f'<tr class="note"><td colspan="{len(head)}">{row[0]}</td></tr>')
            continue
        cells = []
        for c in row:
            if isinstance(c, Raw):
                cells.append(f"<td>{c}</td>")
            elif isinstance(c, (int, float)) and not isinstance(c, bool):
                cells.append(f'<td class="num">{fmt(c)}</td>')
            else:
                cells.append(f"<td>{esc('-' if c is None else c)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


class Raw(str):
    """HTML that ``table`` puts in a cell as it is (already escaped by its maker)."""


def video_cell(cell: Cell) -> str:
    if cell.src is None:
        return (f'<figure><figcaption>{esc(cell.label)}</figcaption>'
                f'<div class="bad">{esc(cell.reason)}</div></figure>')
    muted = " muted" if cell.muted else ""
    return (f'<figure><figcaption>{esc(cell.label)}</figcaption>'
            f'<video data-src="{esc(cell.src)}" data-duration="{cell.duration:.4f}" preload="none" controls '
            f'playsinline{muted}></video></figure>')


def row_html(row: Row) -> str:
    seed = "" if row.seed is None else f" · seed {esc(row.seed)}"
    parts = [f'<section class="sample" id="sample-{esc(row.key)}" data-key="{esc(row.key)}">',
             f'<div><b>{esc(row.key)}</b>{seed} <button class="play" type="button">▶ play row</button></div>',
             f'<p class="caption">{esc(row.caption) if row.caption else "(no caption)"}</p>',
             '<div class="videos">', *(video_cell(c) for c in row.cells), "</div>"]
    if row.scores:
        names = sorted({k for _, s in row.scores for k in s})
        parts.append(table(["video", *names], [[label, *(s.get(n) for n in names)] for label, s in row.scores],
                           "scores"))
    parts.append("</section>")
    return "\n".join(parts)


def nav(pages: int, current: int) -> str:
    if pages <= 1:
        return ""
    links = []
    for p in range(1, pages + 1):
        name = page_name(p)
        links.append(f"<b>{p}</b>" if p == current else f'<a href="{name}">{p}</a>')
    return '<nav>gallery pages: ' + " ".join(links) + "</nav>"


def page_name(page: int) -> str:
    return "index.html" if page == 1 else f"page-{page}.html"


def document(title: str, body: Sequence[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def gallery_pages(rows: list[Row], page_size: int) -> list[list[Row]]:
    """Rows cut into pages of ``page_size`` (at least one page, possibly empty)."""
    return [rows[i:i + page_size] for i in range(0, len(rows), page_size)] or [[]]


def write_pages(out: Path, title: str, top: Sequence[str], rows: list[Row], page_size: int,
                bottom: Sequence[str] = ()) -> list[Path]:
    """``index.html`` (``top``, the first gallery page, ``bottom``) and one page per further ``page_size`` rows."""
    from tav.utils.fileio import write_text_atomic

    pages = gallery_pages(rows, page_size)
    written = []
    for p, chunk in enumerate(pages, 1):
        head = [f"<h1>{esc(title)}</h1>"]
        if p > 1:
            head.append('<p><a href="index.html">← summary, metrics and plots</a></p>')
        body = [*head, *(top if p == 1 else []), f"<h2>Samples ({len(rows)})</h2>", nav(len(pages), p),
                *(row_html(r) for r in chunk), nav(len(pages), p), *(bottom if p == 1 else [])]
        path = out / page_name(p)
        write_text_atomic(path, document(title if p == 1 else f"{title}, page {p}", body))
        written.append(path)
    return written
