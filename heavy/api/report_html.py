"""A report's Markdown as an HTML fragment: what the dashboard shows, and `Accept: text/html` on the report route.

markdown-it (CommonMark) with raw HTML off, so a page's words quoted in a report can only ever be text, and its link
check on, so a `javascript:` link stays text. Images off: `![x](url)` is a link to follow, not a request the reader's
browser makes unasked (a page could have the model put what the job found in that URL). Additions: every
citation `[n]` links to its source, the Sources list's items carry the ids those links point at (`src-n`), and each
block of text takes its direction from its text (`dir="auto"`: a report in Arabic reads right to left).
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token

CITATION = re.compile(r"\[(\d+)\]")
SOURCES_HEADING = "Sources"


def _cite_links(state: StateCore) -> None:
    """`[n]` in text (not in code, not a link's own text, not escaped as `\\[n]`) becomes a link to source n."""
    for block in state.tokens:
        if block.type != "inline" or not block.children:
            continue
        children: list[Token] = []
        in_link = 0
        for token in block.children:
            in_link += {"link_open": 1, "link_close": -1}.get(token.type, 0)
            if token.type != "text" or in_link or not CITATION.search(token.content):
                children.append(token)
                continue
            # re.split with one group alternates text, number, text, ...
            for k, piece in enumerate(CITATION.split(token.content)):
                if k % 2 == 0:
                    if piece:
                        children.append(_text(piece))
                    continue
                link = Token("link_open", "a", 1, attrs={"class": "cite", "href": f"#src-{piece}", "data-cite": piece})
                children += [link, _text(f"[{piece}]"), Token("link_close", "a", -1)]
        block.children = children


def _text(content: str) -> Token:
    token = Token("text", "", 0)
    token.content = content
    return token


def _source_ids(state: StateCore) -> None:
    """The items of the ordered list under the "Sources" heading get ids src-1, src-2, ... (from the list's start)."""
    tokens = state.tokens
    for k, token in enumerate(tokens[:-2]):
        if token.type != "heading_open" or tokens[k + 1].content.strip() != SOURCES_HEADING:
            continue
        start = next((j for j in range(k + 3, len(tokens)) if tokens[j].type in ("ordered_list_open", "heading_open")),
                     None)
        if start is None or tokens[start].type != "ordered_list_open":
            return
        opening = tokens[start]
        number = int(opening.attrGet("start") or 1)
        for item in tokens[start + 1:]:
            if item.type == "ordered_list_close" and item.level == opening.level:
                break
            if item.type == "list_item_open" and item.level == opening.level + 1:
                item.attrSet("id", f"src-{number}")
                number += 1
        return


# blocks holding a report's text: each takes its direction from its own first letter, so an Arabic or Hebrew paragraph
# reads right to left (its full stop and markers at its left end) beside an English one in the same report
_TEXT_BLOCKS = frozenset({"paragraph_open", "heading_open", "list_item_open", "blockquote_open", "th_open", "td_open"})


def _directions_from_text(state: StateCore) -> None:
    for token in state.tokens:
        if token.type in _TEXT_BLOCKS:
            token.attrSet("dir", "auto")


def _external_links_in_a_new_tab(state: StateCore) -> None:
    for block in state.tokens:
        for token in block.children or ():
            if token.type == "link_open" and str(token.attrGet("href") or "").startswith(("http://", "https://")):
                token.attrSet("target", "_blank")
                token.attrSet("rel", "noopener noreferrer")


# the report pass writes tables (GFM); images off (above)
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table").disable("image")
# before text_join, which merges an escaped "\[" (a text_special token) into the text around it: "\[3]" is the text
# "[3]" (a page's footnote, quoted), no citation
_MARKDOWN.core.ruler.before("text_join", "cite_links", _cite_links)
_MARKDOWN.core.ruler.push("source_ids", _source_ids)
_MARKDOWN.core.ruler.push("external_links", _external_links_in_a_new_tab)
_MARKDOWN.core.ruler.push("directions", _directions_from_text)


def report_html(markdown: str) -> str:
    return _MARKDOWN.render(markdown)
