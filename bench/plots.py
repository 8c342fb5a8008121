"""Line plots as PNG with PIL only (ComfyUI ships Pillow; no matplotlib needed)."""

from __future__ import annotations

import math
from pathlib import Path

COLORS = [(70, 130, 200), (230, 140, 40), (90, 170, 90), (200, 70, 70), (150, 100, 190), (120, 120, 120)]


def line_plot(
    path: str | Path,
    title: str,
    x_label: str,
    y_label: str,
    series: dict[str, list[tuple[float, float]]],
    log_y: bool = True,
    size: tuple[int, int] = (720, 420),
) -> Path:
    """Draw ``series`` (name -> [(x, y), ...]) as lines with markers; y on a log scale by default."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 70, 180, 40, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    points = [p for values in series.values() for p in values if p[1] > 0 or not log_y]
    if not points:
        image.save(path)
        return Path(path)
    xs, ys = [p[0] for p in points], [_y(p[1], log_y) for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (_y(y, log_y) - y0) / (y1 - y0) * (height - top - bottom)
        return px, py

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, 12), title, fill="black")
    draw.text((left + (width - left - right) // 2 - 30, height - 25), x_label, fill="black")
    draw.text((5, top - 20), y_label + (" (log)" if log_y else ""), fill="black")
    _ticks(draw, to_px, x0, x1, y0, y1, log_y, height - bottom, left)
    for index, (name, values) in enumerate(series.items()):
        color = COLORS[index % len(COLORS)]
        pts = [to_px(x, y) for x, y in values if y > 0 or not log_y]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for px, py in pts:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        draw.text((width - right + 10, top + 18 * index), name, fill=color)
    image.save(path)
    return Path(path)


def _y(value: float, log_y: bool) -> float:
    return math.log10(value) if log_y else value


def _ticks(draw, to_px, x0, x1, y0, y1, log_y, axis_y, axis_x) -> None:
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        px, _ = to_px(x, 10**y0 if log_y else y0)
        draw.text((px - 10, axis_y + 5), f"{x:g}", fill="black")
        y = y0 + (y1 - y0) * i / 4
        _, py = to_px(x0, 10**y if log_y else y)
        draw.text((5, py - 6), f"{(10**y if log_y else y):.3g}", fill="black")
