"""Rendering scenes to RGB images (flat shapes, no antialiasing)."""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw

from spatialscore.data.synthetic.scene import BACKGROUND, PALETTE, Scene

# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill: Any) -> None:
    """Draw one shape (circle, square, triangle apex up, diamond) filling ``box`` = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (xm, y0)], fill=fill)
    else:
        draw.polygon([(xm, y0), (x1, ym), (xm, y1), (x0, ym)], fill=fill)


def render_scene(scene: Scene, *, image_size: int = 64) -> Image.Image:
    """Draw the scene without antialiasing (exact palette colours), lower layers first."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in sorted(scene.objects, key=lambda o: o.layer):
        draw_shape(draw, obj.shape, obj.pixel_box(image_size), PALETTE[obj.colour])
    return image
