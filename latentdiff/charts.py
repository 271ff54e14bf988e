"""Line and labelled-point charts drawn with PIL (matplotlib is not a dependency), written as PNG atomically: the
profiler's latency chart and the benchmarks' curves."""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import LatentDiffError
from .fileio import atomic_write

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
           (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:  # 1-2-5 steps per decade, inside the data's range (the axis is not stretched to whole decades)
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        ticks = [m * 10.0 ** e for e in decades for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
        return ticks or [lo, hi]
    step = 10 ** math.floor(math.log10((hi - lo) or abs(hi) or 1.0))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= 6:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2)]


def _font(size: int):
    """DejaVu Sans where installed (it has ε, ², ×), else Pillow's bundled font."""
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def draw_chart(series: list[dict], path: str | os.PathLike, *, title: str, xlabel: str, ylabel: str,
               log_x: bool = False, log_y: bool = False, size: tuple[int, int] = (900, 600)) -> Path:
    """Draw lines or labelled points to a PNG atomically. series: [{"label", "x": [...], "y": [...], "points": bool}]."""
    from PIL import Image, ImageDraw

    xs = [x for s in series for x in s["x"]]
    ys = [y for s in series for y in s["y"]]
    if not xs:
        raise LatentDiffError("nothing to chart")
    tx = lambda v: math.log10(v) if log_x else v  # noqa: E731
    ty = lambda v: math.log10(v) if log_y else v  # noqa: E731
    xt, yt = _ticks(min(xs), max(xs), log_x), _ticks(min(ys), max(ys), log_y)
    x0, x1 = tx(min(min(xs), xt[0])), tx(max(max(xs), xt[-1]))
    y0, y1 = ty(min(min(ys), yt[0])), ty(max(max(ys), yt[-1]))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    if log_x:
        x0, x1 = x0 - 0.04 * (x1 - x0), x1 + 0.04 * (x1 - x0)
    if log_y:
        y0, y1 = y0 - 0.04 * (y1 - y0), y1 + 0.04 * (y1 - y0)
    w, h = size
    left, right, top, bottom = 90, 30, 64, 70
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font, small = _font(16), _font(12)
    px = lambda v: left + (tx(v) - x0) / (x1 - x0) * (w - left - right)  # noqa: E731
    py = lambda v: h - bottom - (ty(v) - y0) / (y1 - y0) * (h - top - bottom)  # noqa: E731
    for v in xt:
        if x0 <= tx(v) <= x1:
            d.line([(px(v), top), (px(v), h - bottom)], fill=(230, 230, 230))
            d.text((px(v), h - bottom + 6), f"{v:g}", fill="black", font=small, anchor="mt")
    for v in yt:
        if y0 <= ty(v) <= y1:
            d.line([(left, py(v)), (w - right, py(v))], fill=(230, 230, 230))
            d.text((left - 6, py(v)), f"{v:g}", fill="black", font=small, anchor="rm")
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    d.text((w / 2, 10), title, fill="black", font=font, anchor="mt")
    d.text((w / 2, h - 25), xlabel + (" (log)" if log_x else ""), fill="black", font=font, anchor="mm")
    d.text((15, top - 14), ylabel + (" (log)" if log_y else ""), fill="black", font=small, anchor="lm")
    placed: list[tuple[float, float, float, float]] = []  # label boxes already drawn, to step clashing labels apart
    for i, s in enumerate(series):
        color = tuple(s.get("color") or _COLORS[i % len(_COLORS)])
        pts = [(px(x), py(y)) for x, y in zip(s["x"], s["y"])]
        if s.get("points"):
            for x, y in pts:
                d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=color)
            x, y = pts[-1][0] + 8, pts[-1][1]
            for dy in (0, 14, -14, 28, -28, 42, -42, 56, -56, 70, -70):
                box = d.textbbox((x, y + dy), s["label"], font=small, anchor="lm")
                if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                    break
            placed.append(box)
            if dy:
                d.line([(pts[-1][0] + 5, pts[-1][1]), (x, y + dy)], fill=color)
            d.text((x, y + dy), s["label"], fill=color, font=small, anchor="lm")
        else:
            d.line(pts, fill=color, width=2)
            ly = top + 12 + 18 * i  # legend, top right: a swatch and the label
            d.line([(w - right - 190, ly), (w - right - 165, ly)], fill=color, width=3)
            d.text((w - right - 158, ly), s["label"], fill=color, font=small, anchor="lm")
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
