"""``Text`` that copies fast.

Manim keeps the parsed SVG path object on every glyph of a ``Text``/``MathTex``; copying a
mobject (every Transform/FadeIn does) deep-copies those path objects, which dominated the
render time of the scenes. The points are already generated, so the path objects are
dropped after construction.
"""

from __future__ import annotations

import manim


def lighten(mob):
    """Drop the SVG path objects of ``mob``'s family (points stay); returns ``mob``."""
    for m in mob.get_family():
        if getattr(m, "path_obj", None) is not None:
            m.path_obj = None
    return mob


class Text(manim.Text):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        lighten(self)


class MathTex(manim.MathTex):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        lighten(self)
