"""How every live explorer appears: working controls in a live session, a still of its first state in the book.

An ipywidgets explorer calls Python on every change, so in the static book (no kernel) its sliders would move
and change nothing. Each explorer therefore hands two things to :func:`live_or_still`: a function that builds
the widget, and the HTML of its initial state. In a live session (Jupyter, Colab, a script) the widget is
built and returned; while the book is built (:func:`unveiled.session.book_build`) no widget is created at
all and an :class:`ExplorerStill` is returned instead: the same figures and tables, drawn once, under a
line that names the settings shown and says how to run it live. The page then embeds no widget state and
needs no widget manager.

The live widgets follow two layout rules so that they work on a 390 px phone and in ipywidgets 7.7 (Colab)
as well as 8: rows of controls wrap (:func:`control_row`), and sliders keep a usable minimum width
(:func:`slider_layout`). Figures drawn as SVG scale to the column (:func:`fit_svg`). Introduced in Chapter 1.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..session import book_build

__all__ = ["LIVE_HINT", "ExplorerStill", "control_row", "fit_svg", "labelled", "live_or_still", "slider_layout"]

#: The line under every still: how to make the controls work.
LIVE_HINT = ("This explorer runs live: open this page on Colab (the rocket button at the top, then Colab) or in "
             "Jupyter on your machine (README, Set-up), and run the cell.")


@dataclass(frozen=True)
class ExplorerStill:
    """What a live explorer shows in the static book: its initial state and how to run it live.

    ``title`` names the explorer, ``call`` is the code that runs it, ``settings`` are the controls' initial
    values (shown as text, so the reader knows what the still shows), ``figure_html`` is the initial
    state drawn by the same functions the live widget uses, and ``description`` is the figure's accessible
    name. Jupyter displays it through :meth:`_repr_html_`.
    """

    title: str
    call: str
    settings: tuple[tuple[str, str], ...]
    figure_html: str
    description: str

    def _repr_html_(self) -> str:
        settings = "; ".join(f"{html.escape(k)} {html.escape(v)}" for k, v in self.settings)
        return (
            f'<figure class="unveiled-explorer-still" role="group" aria-label="{html.escape(self.description)}" '
            'style="margin:0;max-width:100%">'
            f'<figcaption style="font-size:0.9em"><b>{html.escape(self.title)}</b>, shown at its initial '
            f"settings ({settings}).</figcaption>"
            f'<div style="max-width:100%;overflow-wrap:anywhere">{self.figure_html}</div>'
            f'<p class="unveiled-live-hint" style="font-size:0.9em;margin:0.3em 0 0 0">{html.escape(LIVE_HINT)} '
            f"The cell calls <code>{html.escape(self.call)}</code>.</p></figure>"
        )

    def __repr__(self) -> str:
        return f"ExplorerStill({self.title!r}: {self.call})"


def live_or_still(build: Callable[[], Any], still: Callable[[], str], *, title: str, call: str,
                  settings: Mapping[str, object], description: str) -> Any:
    """Return ``build()`` (the live widget) in a live session, an :class:`ExplorerStill` in the book build.

    ``still()`` returns the HTML of the explorer's initial state; it is only called in the book build, and
    ``build()`` only outside it, so the book's pages embed no ipywidgets state. Every explorer of
    :mod:`unveiled.explorers` returns through this function. Introduced in Chapter 1.
    """
    if not book_build():
        return build()
    return ExplorerStill(title=title, call=call, settings=tuple((str(k), _text(v)) for k, v in settings.items()),
                         figure_html=still(), description=description)


def _text(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def fit_svg(svg: str, label: str) -> str:
    """Make an SVG drawn at a fixed ``width``/``height`` scale down to its column and carry an accessible name.

    Adds a ``viewBox`` (so the drawing keeps its proportions), ``max-width:100%`` and ``role="img"`` with
    ``aria-label=label``; the SVG keeps its natural size where there is room. Introduced in Chapter 1.
    """
    m = re.match(r"<svg\b([^>]*)>", svg)
    if not m:
        raise ValueError("fit_svg expects a string that starts with an <svg ...> tag")
    attrs = m.group(1)
    w = re.search(r"""\bwidth=["']([\d.]+)["']""", attrs)
    h = re.search(r"""\bheight=["']([\d.]+)["']""", attrs)
    if not (w and h):
        raise ValueError("fit_svg needs numeric width and height attributes on the <svg> tag")
    extra = ""
    if "viewBox" not in attrs:
        extra += f' viewBox="0 0 {w.group(1)} {h.group(1)}"'
    extra += f' role="img" aria-label="{html.escape(label)}"'
    style = "max-width:100%;height:auto"
    if re.search(r"""\bstyle=(["'])""", attrs):
        attrs = re.sub(r"""\bstyle=(["'])""", lambda s: f"style={s.group(1)}{style};", attrs, count=1)
    else:
        extra += f' style="{style}"'
    return f"<svg{attrs}{extra}>" + svg[m.end():]


def control_row(children: Sequence[Any], **layout: str) -> Any:
    """An ``ipywidgets.HBox`` whose items wrap onto the next line on a narrow screen (ipywidgets 7 and 8)."""
    import ipywidgets as w

    return w.HBox(list(children), layout=w.Layout(**{"flex_flow": "row wrap", "align_items": "center", **layout}))


def labelled(text: str, control: Any, width: str = "110px") -> Any:
    """A control with a bold HTML label on its left, wrapping under it on a narrow screen.

    The label is an HTML widget, not ``description=``: widget descriptions are typeset with MathJax 2 by
    the static widget manager and truncated at a fixed width in ipywidgets 7.
    """
    import ipywidgets as w

    return control_row([w.HTML(f"<b>{html.escape(text)}</b>", layout=w.Layout(width=width)), control])


def slider_layout(width: str = "300px") -> Any:
    """A slider layout that shrinks to fit a phone but never below a usable 160 px (ipywidgets 7 and 8)."""
    import ipywidgets as w

    return w.Layout(width=width, max_width="100%", min_width="160px")
