"""Live explorers for Jupyter and Colab (ipywidgets): controls that recompute with the library as you move them.

Unlike the Altair charts of :mod:`unveiled.plots`, which run in the static page with no kernel, an explorer
calls Python on every change, so it can use anything in the library. The static book shows its initial
state. One module per subject; each exposes a function that returns a ready-to-display widget.
Introduced in Chapter 1.
"""

from .roofline import roofline_explorer, roofline_svg

__all__ = ["roofline_explorer", "roofline_svg"]
