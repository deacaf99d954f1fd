"""Charts of the book (Altair). One sub-module per subject; shared colours and helpers in :mod:`.style`.

Interactivity that must work in the static site uses Altair parameters bound to sliders or dropdowns: they
run in the reader's browser with no kernel. Introduced in Chapter 1.
"""

from .style import (
    BOUND_COLORS,
    PRECISION_COLORS,
    STAGE_COLORS,
    color_scale,
    contrast_ratio,
    legible,
    legible_scale,
    log_axis,
)

__all__ = ["BOUND_COLORS", "PRECISION_COLORS", "STAGE_COLORS", "color_scale", "contrast_ratio", "legible",
           "legible_scale", "log_axis"]
