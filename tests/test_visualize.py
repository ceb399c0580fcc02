"""Ranking report: grids, CMC plot and HTML index (NumPy + Pillow + matplotlib only)."""

from __future__ import annotations

import html
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from tfmarket.serving.report import BORDER, COLORS, grid_size, grid_slot_box, write_ranking_report

ODD_NAME = "0002_c2s1_a&b<x>\"q.jpg"  # needs escaping in HTML text and attributes


def _jpeg(path: Path, rgb, size=(64, 128)) -> str:
    from PIL import Image

    noise = np.random.default_rng(len(path.name)).integers(0, 30, (size[1], size[0], 3))
    pixels = np.clip(np.array(rgb)[None, None] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")
    return str(path)


@pytest.fixture()
def images(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    queries = [_jpeg(src / f"q{i}_0001_c1s1.jpg", (30 * i, 80, 120)) for i in range(3)]
    gallery = [_jpeg(src / f"g{i}_0001_c2s1.jpg", (200, 20 * i, 40), size=(48, 100))
               for i in range(4)]
    gallery.append(_jpeg(src / ODD_NAME, (10, 10, 200)))
    broken = src / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    gallery.append(str(broken))
    return queries, gallery


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [value for name, value in attrs if name in ("src", "href") and value]


def _refs(html_path: Path) -> list[str]:
    parser = _Refs()
    parser.feed(html_path.read_text(encoding="utf-8"))
    return parser.refs


def _border_pixel(grid, slot):
    left, top, right, bottom = grid_slot_box(slot)
    return grid.getpixel((left + BORDER // 2, (top + bottom) // 2))


def test_report_with_labels_and_cmc(tmp_path, images):
    from PIL import Image

    queries, gallery = images
    topk = 5
    indices = np.array([[4, 0, 5, 1, -1, 2],
                        [0, 1, 2, 3, 4, 5],
                        [3, 2, 1, 0, 4, 5]])
    correct = np.array([[1, 0, -1, 1, 0, 0],
                        [0, 1, 0, 0, 1, 0],
                        [0, 0, 0, 0, 0, 0]])
    attributes = ["female, adult, backpack, upper: red", "male <teen> & bag", "male, old"]
    cmc = np.linspace(0.62, 0.98, 20)

    out = write_ranking_report(tmp_path / "report", queries, gallery, indices, correct=correct,
                               query_attributes=attributes, num_queries=10, topk=topk, cmc=cmc,
                               title="Test <report>")
    report = tmp_path / "report" / "ranking"
    assert Path(out["html"]) == report / "index.html"
    assert [Path(p).name for p in out["grids"]] == ["query_0.png", "query_1.png", "query_2.png"]
    assert Path(out["cmc"]) == report / "cmc.png"

    with Image.open(out["grids"][0]) as grid:
        grid = grid.convert("RGB")
        assert grid.size == grid_size(topk)
        assert 400 <= grid.size[0] <= 1000 and 130 <= grid.size[1] <= 300
        assert _border_pixel(grid, 0) == COLORS["query"]
        assert _border_pixel(grid, 1) == COLORS["correct"]  # gallery 4 (odd name), correct
        assert _border_pixel(grid, 2) == COLORS["wrong"]
        assert _border_pixel(grid, 3) == COLORS["ignored"]  # broken image, ignored
        assert _border_pixel(grid, 5) != COLORS["wrong"]  # -1: empty slot, not a coloured one
        # The unreadable image is a grey placeholder, not a crash.
        left, top, right, bottom = grid_slot_box(3)
        assert grid.getpixel((left + BORDER + 2, top + BORDER + 2)) == (128, 128, 128)
    with Image.open(out["cmc"]) as plot:
        assert plot.size[0] >= 300 and plot.size[1] >= 200

    text = (report / "index.html").read_text(encoding="utf-8")
    assert html.escape(ODD_NAME) in text and ODD_NAME not in text
    assert "q0_0001_c1s1.jpg" in text and "g3_0001_c2s1.jpg" in text
    assert "female, adult, backpack, upper: red" in text
    assert html.escape("male <teen> & bag") in text and "<teen>" not in text
    assert "Test &lt;report&gt;" in text
    assert "rank-1: 62.00%" in text

    refs = _refs(report / "index.html")
    assert set(refs) == {"query_0.png", "query_1.png", "query_2.png", "cmc.png"}
    moved = tmp_path / "elsewhere" / "ranking"
    shutil.move(str(report), str(moved))
    for ref in refs:
        assert not urlparse(ref).scheme and not Path(ref).is_absolute()
        assert (moved / ref).is_file()


def test_report_without_labels_subset_is_deterministic(tmp_path, images):
    from PIL import Image

    queries, gallery = images
    queries = queries * 4  # 12 queries
    indices = np.tile(np.array([[0, 1, 2, 3]]), (len(queries), 1))
    a = write_ranking_report(tmp_path / "a", queries, gallery, indices, num_queries=4, topk=3,
                             seed=7)
    b = write_ranking_report(tmp_path / "b", queries, gallery, indices, num_queries=4, topk=3,
                             seed=7)
    names = [Path(p).name for p in a["grids"]]
    assert len(names) == 4 and names == [Path(p).name for p in b["grids"]]
    assert a["cmc"] is None and not (tmp_path / "a" / "ranking" / "cmc.png").exists()
    with Image.open(a["grids"][0]) as grid:
        grid = grid.convert("RGB")
        assert grid.size == grid_size(3)
        assert _border_pixel(grid, 1) == COLORS["unknown"]
        assert _border_pixel(grid, 1) not in (COLORS["correct"], COLORS["wrong"])
    refs = _refs(Path(a["html"]))
    assert sorted(refs) == sorted(names)
    assert "cmc.png" not in Path(a["html"]).read_text(encoding="utf-8")


def test_report_rejects_bad_inputs(tmp_path, images):
    queries, gallery = images
    indices = np.zeros((len(queries), 3), dtype=int)
    with pytest.raises(ValueError, match="columns"):
        write_ranking_report(tmp_path, queries, gallery, indices, topk=5)
    with pytest.raises(ValueError, match="in \\[-1"):
        write_ranking_report(tmp_path, queries, gallery, indices + len(gallery), topk=3)
    with pytest.raises(ValueError, match="correct"):
        write_ranking_report(tmp_path, queries, gallery, indices, topk=3,
                             correct=np.full((len(queries), 3), 2))
    with pytest.raises(ValueError, match="cmc"):
        write_ranking_report(tmp_path, queries, gallery, indices, topk=3, cmc=[50.0, 90.0])
