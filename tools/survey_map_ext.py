"""Sphinx extension: the ``survey-map`` directive renders the survey's map on the book's front page.

``data/survey_map.csv`` (read by :mod:`unveiled.survey_map`) maps every section of the survey to the book
section that treats it. In a page, ::

    ```{survey-map}
    ```

renders that map as a table whose book sections link to the sections themselves, and ::

    ```{survey-map}
    :show: reproduced
    ```

renders the sentence of which survey figures and tables the book recomputes. The links are resolved once every
page has been read, from the table of contents Sphinx itself built (each chapter's ``# Chapter N — ...``
title and ``## N.M ...`` headings, with their real anchors), so they are right by construction; a map row
naming a section that does not exist is a build warning (an error under ``-W``). Registered in
``_config.yml`` (``sphinx.local_extensions``); no script, no kernel, a few kilobytes of HTML.
"""

from __future__ import annotations

import re
from typing import ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

LOGGER = logging.getLogger(__name__)


class survey_map_node(nodes.General, nodes.Element):  # docutils names its node classes in lower case
    """Placeholder replaced by the rendered map once every page's sections are known."""


class SurveyMapDirective(SphinxDirective):
    option_spec: ClassVar[dict] = {"show": lambda value: directives.choice(value, ("table", "reproduced"))}

    def run(self):
        node = survey_map_node()
        node["show"] = self.options.get("show", "table")
        return [node]


def book_links(app, fromdoc: str) -> tuple[dict[str, str], dict[int, str]]:
    """Links from ``fromdoc`` to every numbered book section ("3.4") and every chapter (3), from Sphinx's own
    table of contents of each page."""
    sections: dict[str, str] = {}
    chapters: dict[int, str] = {}
    for doc, toc in app.env.tocs.items():
        uri = app.builder.get_relative_uri(fromdoc, doc)
        for ref in toc.findall(nodes.reference):
            title = ref.astext().strip()
            chapter = re.match(r"Chapter (\d+) — ", title)
            section = re.match(r"(\d+\.\d+) ", title)
            if chapter:
                chapters[int(chapter.group(1))] = uri
            elif section:
                sections[section.group(1)] = uri + ref.get("anchorname", "")
    return sections, chapters


def render(app, doctree, docname: str) -> None:
    from unveiled import survey_map

    for node in list(doctree.findall(survey_map_node)):
        table = survey_map.survey_map()
        if node["show"] == "reproduced":
            node.replace_self(nodes.paragraph(text=survey_map.reproduction_summary(table)))
            continue
        sections, chapters = book_links(app, docname)
        for book in sorted(set(table.book) - {""} - set(sections)):
            LOGGER.warning(f"survey_map.csv links §{book}, which no page of the table of contents has",
                           location=node)
        node.replace_self(nodes.raw("", survey_map.survey_map_html(table, sections, chapters), format="html"))


def setup(app):
    app.add_node(survey_map_node, html=(lambda self, node: None, lambda self, node: None))
    app.add_directive("survey-map", SurveyMapDirective)
    app.connect("doctree-resolved", render)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
