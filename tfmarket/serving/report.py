"""Ranking reports: per-query grids of the top-k gallery results and a small HTML page.

:func:`write_ranking_report` writes, under ``<out_dir>/ranking/``:

* ``query_<index>.png``: one grid per chosen query; the query image first (blue border), then
  its top-k gallery results, best first, each with a rank number above it and a border coloured
  by correctness (green = same identity, red = wrong, grey = ignored by the Market-1501 protocol,
  i.e. same identity and same camera or junk; neutral dark grey when labels are unknown). A
  ``-1`` gallery index ("no result") is drawn as an empty slot; an image that cannot be read is
  drawn as a grey "unreadable" placeholder. A caption line under the images gives the query file
  name and, when given, its predicted-attribute text.
* ``cmc.png``: the CMC curve, when ``cmc`` is given.
* ``index.html``: every chosen query with its grid, the file names, the attribute text and the
  colour legend. Every file name and text is HTML-escaped, and the page only refers to files in
  its own folder by relative path, so the ``ranking`` folder can be moved or archived.

Only NumPy, Pillow and matplotlib are used (no TensorFlow), and they are imported inside the
functions; matplotlib draws through its Agg canvas without touching the global pyplot state.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Size (height, width) every image is resized to in a grid.
IMAGE_SIZE = (128, 64)
#: Border thickness in pixels around each image.
BORDER = 4
#: Space around the grid, height of the rank-number strip, gaps between slots.
MARGIN = 8
LABEL_H = 18
CAPTION_H = 20
GAP = 4
SEPARATOR = 16

#: RGB colours of the borders (and the HTML legend).
COLORS: dict[str, tuple[int, int, int]] = {
    "query": (0, 90, 230),
    "correct": (0, 170, 0),
    "wrong": (220, 0, 0),
    "ignored": (165, 165, 165),
    "unknown": (60, 60, 60),
    "empty": (200, 200, 200),
}
_BACKGROUND = (255, 255, 255)
_EMPTY_FILL = (240, 240, 240)
_PLACEHOLDER_FILL = (128, 128, 128)

_STATUS_BY_VALUE = {1: "correct", 0: "wrong", -1: "ignored"}
_LEGEND = [
    ("query", "query image"),
    ("correct", "correct match (same identity, different camera)"),
    ("wrong", "wrong match (different identity)"),
    ("ignored", "ignored by the Market-1501 protocol (same identity and camera, or junk)"),
    ("unknown", "labels unknown"),
    ("empty", "no result"),
]


def grid_slot_box(slot: int) -> tuple[int, int, int, int]:
    """Pixel box ``(left, top, right, bottom)`` (right/bottom exclusive) of one bordered slot.

    ``slot`` 0 is the query, ``slot`` r (1-based) the rank-r result. The box includes the
    ``BORDER``-pixel outline; the image itself is the box shrunk by ``BORDER`` on each side.
    """
    if slot < 0:
        raise ValueError(f"slot must be >= 0, got {slot}")
    height, width = IMAGE_SIZE
    cell_w, cell_h = width + 2 * BORDER, height + 2 * BORDER
    left = MARGIN if slot == 0 else MARGIN + cell_w + SEPARATOR + (slot - 1) * (cell_w + GAP)
    top = MARGIN + LABEL_H
    return left, top, left + cell_w, top + cell_h


def grid_size(topk: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of a grid PNG with ``topk`` results (caption included)."""
    right = grid_slot_box(topk)[2] if topk > 0 else grid_slot_box(0)[2]
    bottom = grid_slot_box(0)[3]
    return right + MARGIN, bottom + CAPTION_H + MARGIN // 2


def _font(size: int = 11):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except Exception:  # bitmap fallback when Pillow lacks FreeType
        return ImageFont.load_default()


def _safe_text(draw, text: str, font) -> str:
    """``text`` if ``font`` can render it, else an ASCII rendering of it."""
    try:
        draw.textlength(text, font=font)
        return text
    except (UnicodeEncodeError, UnicodeError):
        return text.encode("ascii", "replace").decode("ascii")


def _fit_text(draw, text: str, font, max_width: int) -> str:
    """``text`` shortened with "..." so that it fits in ``max_width`` pixels."""
    text = _safe_text(draw, text, font)
    if draw.textlength(text, font=font) <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid] + "...", font=font) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "..."


def _centered_text(draw, box: tuple[int, int, int, int], text: str, font, fill) -> None:
    left, top, right, bottom = box
    text = _fit_text(draw, text, font, right - left)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    x = left + (right - left - (x1 - x0)) / 2 - x0
    y = top + (bottom - top - (y1 - y0)) / 2 - y0
    draw.text((x, y), text, font=font, fill=fill)


def _placeholder(text: str, fill, font):
    """A ``IMAGE_SIZE`` RGB image of colour ``fill`` with ``text`` centred on it."""
    from PIL import Image, ImageDraw

    height, width = IMAGE_SIZE
    image = Image.new("RGB", (width, height), fill)
    draw = ImageDraw.Draw(image)
    _centered_text(draw, (0, 0, width, height), text, font, (255, 255, 255))
    return image


def _load_image(path: str, font):
    """The image at ``path`` as RGB resized to ``IMAGE_SIZE``, or an "unreadable" placeholder."""
    from PIL import Image, ImageOps

    height, width = IMAGE_SIZE
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    except Exception:  # any decoding problem: the report must not crash
        return _placeholder("unreadable", _PLACEHOLDER_FILL, font)


def _draw_grid(query_path: str, result_paths: Sequence[str | None], statuses: Sequence[str],
               caption: str, out_path: Path, cache: dict[str, Any], font) -> None:
    """Write one grid PNG: the query then ``len(result_paths)`` results (``None`` = empty)."""
    from PIL import Image, ImageDraw

    topk = len(result_paths)
    canvas = Image.new("RGB", grid_size(topk), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    def image_for(path: str):
        if path not in cache:
            cache[path] = _load_image(path, font)
        return cache[path]

    slots = [(query_path, "query", "query")]
    slots += [(path, status, str(rank)) for rank, (path, status)
              in enumerate(zip(result_paths, statuses, strict=True), start=1)]
    for slot, (path, status, label) in enumerate(slots):
        left, top, right, bottom = grid_slot_box(slot)
        if path is None:
            draw.rectangle([left, top, right - 1, bottom - 1], fill=_EMPTY_FILL,
                           outline=COLORS["empty"], width=1)
            _centered_text(draw, (left, top, right, bottom), "no result", font, (120, 120, 120))
        else:
            draw.rectangle([left, top, right - 1, bottom - 1], fill=COLORS[status])
            canvas.paste(image_for(path), (left + BORDER, top + BORDER))
        label_fill = COLORS["query"] if slot == 0 else (0, 0, 0)
        _centered_text(draw, (left, top - LABEL_H, right, top - 2), label, font, label_fill)

    if topk > 0:  # thin vertical rule between the query and its results
        x = grid_slot_box(0)[2] + SEPARATOR // 2
        draw.line([(x, MARGIN + LABEL_H), (x, grid_slot_box(0)[3] - 1)], fill=(190, 190, 190))

    bottom = grid_slot_box(0)[3]
    width = canvas.size[0]
    text = _fit_text(draw, caption, font, width - 2 * MARGIN)
    draw.text((MARGIN, bottom + 4), text, font=font, fill=(30, 30, 30))
    canvas.save(out_path, format="PNG")


def _write_cmc_plot(cmc, out_path: Path) -> None:
    """Write the CMC curve ``cmc`` [K] (``cmc[0]`` = rank-1) as a PNG through the Agg canvas."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranks = np.arange(1, len(cmc) + 1)
    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(ranks, cmc, color="tab:blue", linewidth=1.8,
            marker="o" if len(cmc) <= 50 else None, markersize=3)
    for rank in (1, 5, 10):
        if rank <= len(cmc):
            value = float(cmc[rank - 1])
            ax.plot([rank], [value], "o", color="tab:red", markersize=5, zorder=3)
            ax.annotate(f"rank-{rank}: {100 * value:.1f}%", xy=(rank, value),
                        xytext=(8, -14 if value > 0.1 else 6), textcoords="offset points",
                        fontsize=9,
                        color="tab:red")
    ax.set_xlim(0.5, len(cmc) + 0.5)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (CMC)")
    ax.set_title("Cumulative matching characteristic")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, format="png")


def _rgb_css(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def _html_page(title: str, sections: list[str], cmc_block: str, summary: str) -> str:
    esc = html.escape
    legend = "\n".join(
        f'<li><span class="swatch" style="border-color:{_rgb_css(COLORS[key])}"></span>'
        f"{esc(text)}</li>" for key, text in _LEGEND)
    status_css = "\n".join(f"li.{key} {{ color: {_rgb_css(COLORS[key])}; }}"
                           for key in ("correct", "wrong", "ignored"))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
section {{ border-top: 1px solid #ddd; padding-top: 0.6em; margin-top: 1em; }}
img.grid {{ display: block; max-width: 100%; }}
.swatch {{ display: inline-block; width: 1em; height: 1em; border: 4px solid;
  margin-right: 0.4em; vertical-align: middle; }}
ul.legend {{ list-style: none; padding-left: 0; }}
ol.results {{ font-family: monospace; font-size: 0.9em; columns: 2; }}
li.empty, li.unknown {{ color: #666; }}
{status_css}
.attributes {{ font-style: italic; }}
</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p>{esc(summary)}</p>
<h2>Legend</h2>
<ul class="legend">
{legend}
</ul>
{cmc_block}
<h2>Queries</h2>
{"".join(sections) if sections else "<p>No query selected.</p>"}
</body>
</html>
"""


def write_ranking_report(out_dir: str | os.PathLike, query_paths: Sequence[str],
                         gallery_paths: Sequence[str], topk_indices, *, correct=None,
                         query_attributes: Sequence[str | None] | None = None,
                         num_queries: int = 10, topk: int = 10, cmc=None,
                         title: str = "tfmarket ranking", seed: int = 0) -> dict:
    """Write ranking grids, an optional CMC plot and an HTML index under ``out_dir/ranking``.

    Args:
      out_dir: output folder; ``out_dir/ranking`` is created (existing files are overwritten).
      query_paths: list[str] [N] query image paths.
      gallery_paths: list[str] [M] gallery image paths.
      topk_indices: int array [N, >= topk], gallery indices best first; ``-1`` = no result
        (drawn as an empty slot). Only the first ``topk`` columns are used.
      correct: optional bool/int array [N, >= topk]: 1 = same identity (green), 0 = wrong (red),
        -1 = ignored by the Market-1501 protocol (grey). ``None`` when labels are unknown
        (neutral outline).
      query_attributes: optional list[str] [N] of short predicted-attribute texts, shown under
        each query (``None`` entries are skipped).
      num_queries: how many queries to show; a seeded random subset, shown in index order, or
        all queries (in order) when ``num_queries >= N``.
      topk: number of results per query.
      cmc: optional list of floats [K] in [0, 1], ``cmc[0]`` = rank-1; plotted to ``cmc.png``.
      title: page title.
      seed: seed of the query subset.

    Returns:
      ``{"html": str, "grids": list[str] (one per chosen query, in page order),
      "cmc": str | None}``, all paths inside ``out_dir/ranking``.

    Raises:
      ValueError: inconsistent shapes, out-of-range indices or ``correct`` values, a ``cmc``
        outside [0, 1], or ``topk``/``num_queries`` out of range. Unreadable images do not
        raise: they are drawn as placeholders.
    """
    import numpy as np

    query_paths = [str(p) for p in query_paths]
    gallery_paths = [str(p) for p in gallery_paths]
    n, m = len(query_paths), len(gallery_paths)
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if num_queries < 0:
        raise ValueError(f"num_queries must be >= 0, got {num_queries}")

    indices = np.asarray(topk_indices)
    if indices.ndim != 2 or indices.shape[0] != n:
        raise ValueError(f"topk_indices must have shape [N={n}, >= topk], got {indices.shape}")
    if indices.shape[1] < topk:
        raise ValueError(f"topk_indices has {indices.shape[1]} columns, fewer than topk={topk}")
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"topk_indices must be integers, got dtype {indices.dtype}")
    indices = indices[:, :topk].astype(np.int64)
    if indices.size and (indices.min() < -1 or indices.max() >= m):
        raise ValueError(f"topk_indices must be in [-1, M={m}), got values in "
                         f"[{indices.min()}, {indices.max()}]")

    status_values = None
    if correct is not None:
        status_values = np.asarray(correct)
        if status_values.ndim != 2 or status_values.shape[0] != n or \
                status_values.shape[1] < topk:
            raise ValueError(f"correct must have shape [N={n}, >= topk={topk}], "
                             f"got {status_values.shape}")
        status_values = status_values[:, :topk].astype(np.int64)
        if not np.isin(status_values, (-1, 0, 1)).all():
            raise ValueError("correct values must be 1 (same identity), 0 (wrong) or -1 "
                             "(ignored)")

    if query_attributes is not None and len(query_attributes) != n:
        raise ValueError(f"query_attributes must have N={n} entries, got "
                         f"{len(query_attributes)}")

    cmc_values = None
    if cmc is not None:
        cmc_values = np.asarray(cmc, dtype=np.float64).reshape(-1)
        if cmc_values.size == 0:
            raise ValueError("cmc is empty")
        if not np.isfinite(cmc_values).all() or cmc_values.min() < -1e-6 or \
                cmc_values.max() > 1 + 1e-6:
            raise ValueError("cmc values must be finite and in [0, 1] (fractions, not percent)")
        cmc_values = np.clip(cmc_values, 0.0, 1.0)

    if num_queries >= n:
        chosen = list(range(n))
    else:
        rng = np.random.default_rng(seed)
        chosen = sorted(int(i) for i in rng.choice(n, size=num_queries, replace=False))

    report_dir = Path(out_dir) / "ranking"
    report_dir.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    font = _font()
    cache: dict[str, Any] = {}
    grids: list[str] = []
    sections: list[str] = []

    for q in chosen:
        result_paths: list[str | None] = []
        statuses: list[str] = []
        for r in range(topk):
            g = int(indices[q, r])
            if g < 0:
                result_paths.append(None)
                statuses.append("empty")
            else:
                result_paths.append(gallery_paths[g])
                statuses.append("unknown" if status_values is None
                                else _STATUS_BY_VALUE[int(status_values[q, r])])
        attributes = None
        if query_attributes is not None and query_attributes[q] is not None:
            attributes = str(query_attributes[q])
        query_name = os.path.basename(query_paths[q])
        caption = f"query {q}: {query_name}" + (f" | {attributes}" if attributes else "")

        grid_name = f"query_{q}.png"
        grid_path = report_dir / grid_name
        _draw_grid(query_paths[q], result_paths, statuses, caption, grid_path, cache, font)
        grids.append(str(grid_path))

        items = []
        for rank, (path, status) in enumerate(zip(result_paths, statuses, strict=True), 1):
            if path is None:
                items.append(f'<li class="empty" value="{rank}">(no result)</li>')
            else:
                items.append(f'<li class="{status}" value="{rank}" title="{esc(path)}">'
                             f"{esc(os.path.basename(path))}</li>")
        attribute_html = (f'<p class="attributes">Predicted attributes: {esc(attributes)}</p>'
                          if attributes else "")
        sections.append(
            f'<section id="query-{q}">\n'
            f'<h3>Query {q}: <span title="{esc(query_paths[q])}">{esc(query_name)}</span></h3>\n'
            f"{attribute_html}\n"
            f'<img class="grid" src="{esc(grid_name)}" alt="{esc(f"ranking of {query_name}")}">\n'
            f'<ol class="results">\n' + "\n".join(items) + "\n</ol>\n</section>\n")

    cmc_path = None
    cmc_block = ""
    if cmc_values is not None:
        cmc_path = report_dir / "cmc.png"
        _write_cmc_plot(cmc_values, cmc_path)
        ranks = ", ".join(f"rank-{r}: {100 * cmc_values[r - 1]:.2f}%" for r in (1, 5, 10)
                          if r <= len(cmc_values))
        cmc_block = (f'<h2>CMC</h2>\n<p>{esc(ranks)}</p>\n'
                     f'<img class="cmc" src="cmc.png" alt="CMC curve">\n')

    summary = (f"{len(chosen)} of {n} queries shown (seed {seed}), top-{topk} of {m} gallery "
               f"images; {'labels known' if status_values is not None else 'labels unknown'}.")
    html_path = report_dir / "index.html"
    html_path.write_text(_html_page(title, sections, cmc_block, summary), encoding="utf-8")
    return {"html": str(html_path), "grids": grids,
            "cmc": str(cmc_path) if cmc_path is not None else None}
