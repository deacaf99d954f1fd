"""Live explorers for Jupyter and Colab (ipywidgets): controls that recompute with the library as you move them.

Unlike the Altair charts of :mod:`unveiled.plots`, which run in the static page with no kernel, an explorer
calls Python on every change, so it can use anything in the library. In the built book, where no kernel
runs, every explorer shows a still of its initial state and a line on how to run it live: each returns
through :func:`.live.live_or_still` (see that module for the convention and the layout rules that keep the
live widgets usable on a phone and in ipywidgets 7). One module per subject; each exposes a function that
returns a ready-to-display object. Introduced in Chapter 1.
"""

from .live import ExplorerStill, live_or_still
from .roofline import roofline_explorer, roofline_svg

__all__ = ["ExplorerStill", "live_or_still", "roofline_explorer", "roofline_svg"]
