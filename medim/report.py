"""Run outputs: ``summary.json`` (machine-readable) and ``report.html`` (one self-contained page).

The page has no external assets: curves are inline SVG, image grids inline base64 PNG.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` via a temporary file and rename (never a half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def image_grid(rows: Sequence[Sequence[np.ndarray]], *, pad: int = 2) -> Image.Image:
    """Tile images (uint8 [H, W] or [H, W, 3], all the same size) into one RGB grid."""
    first = rows[0][0]
    h, w = first.shape[:2]
    n_cols = max(len(r) for r in rows)
    grid = np.full(((h + pad) * len(rows) + pad, (w + pad) * n_cols + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = rgb
    return Image.fromarray(grid)


def _png_data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def svg_curves(
    series: dict[str, Sequence[tuple[float, float]]], *, width: int = 520, height: int = 220
) -> str:
    """Line chart of named (x, y) series as an inline SVG string."""
    points = [(x, y) for s in series.values() for x, y in s if np.isfinite(y)]
    if not points:
        return "<p>(no data)</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    m = 40
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]

    def sx(x: float) -> float:
        return m + (x - x0) / (x1 - x0) * (width - 2 * m)

    def sy(y: float) -> float:
        return height - m + (y - y0) / (y1 - y0) * (2 * m - height)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    parts.append(f'<rect width="{width}" height="{height}" fill="white" stroke="#ccc"/>')
    parts.append(f'<text x="4" y="{m - 6}" font-size="11">{y1:.3g}</text>')
    parts.append(f'<text x="4" y="{height - m}" font-size="11">{y0:.3g}</text>')
    parts.append(f'<text x="{m}" y="{height - 8}" font-size="11">{x0:g}</text>')
    parts.append(f'<text x="{width - m}" y="{height - 8}" font-size="11">{x1:g}</text>')
    for k, (name, s) in enumerate(series.items()):
        colour = colours[k % len(colours)]
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s if np.isfinite(y))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>')
        parts.append(
            f'<text x="{width - 150}" y="{16 + 14 * k}" font-size="11" fill="{colour}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


@dataclass
class Section:
    """One part of the page: a heading and trusted HTML produced by the helpers here."""

    title: str
    body: str


@dataclass
class Page:
    """A report page assembled section by section."""

    title: str
    sections: list[Section] = field(default_factory=list)

    def table(self, title: str, rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
        )
        self.sections.append(Section(title, f"<table><tr>{head}</tr>{body}</table>"))

    def curves(self, title: str, series: dict[str, Sequence[tuple[float, float]]]) -> None:
        self.sections.append(Section(title, svg_curves(series)))

    def image(self, title: str, img: Image.Image, caption: str = "") -> None:
        cap = f"<p>{html.escape(caption)}</p>" if caption else ""
        self.sections.append(
            Section(title, f'<img src="{_png_data_uri(img)}" alt="{html.escape(title)}"/>{cap}')
        )

    def write(self, path: Path) -> None:
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
            "font-size:13px;text-align:left;vertical-align:top}img{image-rendering:pixelated;max-width:100%}"
        )
        body = "".join(f"<h2>{html.escape(s.title)}</h2>{s.body}" for s in self.sections)
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>{body}</body></html>"
        )
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(page)
        os.replace(tmp, path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
