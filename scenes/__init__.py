"""Manim scenes that replay minigrpo traces (render with ``minigrpo render`` or
``manim -ql scenes/NAME.py``; see docs/scenes.md)."""
