"""The reports both halves write: Markdown tables, "value [95% CI]" cells, JSON results and the bar chart of
accuracies with CIs (``spatialscore benchmark``, ``spatialrl evaluate``, ``spatialrl paper``'s summary)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

__all__ = ["ci_cell", "draw_accuracy_chart", "markdown_table", "write_json"]

_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric_from: int = 1) -> str:
    """A Markdown table; the columns from ``numeric_from`` on are right-aligned (numbers)."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells: {[len(r) for r in rows]}")
    return "\n".join("| " + " | ".join(line) + " |" for line in [header, align, *rows]) + "\n"


def ci_cell(value: float | None, low: float | None = None, high: float | None = None, *, signed: bool = False) -> str:
    """``0.812 [0.771, 0.850]`` (3 decimals; ``signed``: with a sign, for differences); the value alone without a
    finite CI, and a dash without a value."""
    if value is None:
        return "–"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    text = fmt.format(value)
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{fmt.format(low)}, {fmt.format(high)}]"
    return text


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON with a final newline (UTF-8)."""
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def draw_accuracy_chart(
    *,
    groups: Sequence[str],
    series: Mapping[str, Sequence[tuple[float | None, float | None, float | None]]],
    size: tuple[int, int] = (800, 480),
    title: str = "Pairwise accuracy, ties count half (95% bootstrap CI)",
) -> Image.Image:
    """Grouped bar chart drawn with Pillow: one group per label, one bar per series, CI error bars.

    ``series[name][g]`` is ``(accuracy, ci_low, ci_high)`` for ``groups[g]`` (None: not drawn). The y axis
    spans [0, 1] with a dashed chance line at 0.5.
    """
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(12)
    legend_rows = math.ceil(len(series) / 4)
    left, right, top, bottom = 56, width - 16, 56 + 20 * legend_rows, height - 36
    draw.text((width // 2, 8), title, fill=(0, 0, 0), font=font, anchor="mt")
    for i, name in enumerate(series):
        x = left + (i % 4) * ((right - left) // 4)
        y = 32 + 20 * (i // 4)
        draw.rectangle([x, y, x + 12, y + 12], fill=_PALETTE[i % len(_PALETTE)])
        draw.text((x + 18, y + 6), name, fill=(0, 0, 0), font=small, anchor="lm")

    def y_of(value: float) -> float:
        return bottom - value * (bottom - top)

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(tick)
        draw.line([left, y, right, y], fill=(225, 225, 225))
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((left - 8, y), f"{tick:.2f}", fill=(0, 0, 0), font=small, anchor="rm")
    for x in range(left, right, 12):
        draw.line([x, y_of(0.5), min(x + 6, right), y_of(0.5)], fill=(120, 120, 120))

    slot = (right - left) / max(len(groups), 1)
    bar = slot * 0.8 / max(len(series), 1)
    for g, group in enumerate(groups):
        x0 = left + g * slot + slot * 0.1
        draw.text((left + (g + 0.5) * slot, bottom + 8), group, fill=(0, 0, 0), font=font, anchor="mt")
        for s, values in enumerate(series.values()):
            accuracy, low, high = values[g]
            if accuracy is None:
                continue
            bx = x0 + s * bar
            draw.rectangle([bx + 1, y_of(accuracy), bx + bar - 1, bottom], fill=_PALETTE[s % len(_PALETTE)])
            label_y = y_of(accuracy)
            if low is not None and high is not None:
                cx, cap = bx + bar / 2, max(bar / 4, 2)
                draw.line([cx, y_of(high), cx, y_of(low)], fill=(0, 0, 0), width=2)
                for end in (low, high):
                    draw.line([cx - cap, y_of(end), cx + cap, y_of(end)], fill=(0, 0, 0), width=2)
                label_y = min(label_y, y_of(high))
            if bar >= 30:
                draw.text((bx + bar / 2, label_y - 3), f"{accuracy:.2f}", fill=(0, 0, 0), font=small, anchor="mb")
    draw.line([left, top, left, bottom], fill=(0, 0, 0))
    draw.line([left, bottom, right, bottom], fill=(0, 0, 0))
    return image
