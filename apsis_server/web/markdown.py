"""Job descriptions: Markdown to the small, sanitized HTML the job page shows."""

from __future__ import annotations

import functools
import re

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

# Links may go to these schemes, or be relative; nothing else survives.
SCHEMES = frozenset({"http", "https", "mailto"})

# What the renderer below can produce, and so all the sanitizer lets through.
# Headings start at h3: the page's own h1 and h2 stay the biggest.
TAGS = frozenset(
    {
        *("p", "br", "hr", "blockquote", "pre", "code", "strong", "em", "a"),
        *("h3", "h4", "h5", "h6", "ul", "ol", "li"),
        *("table", "thead", "tbody", "tr", "th", "td"),
    }
)
# `start` keeps "3. third" numbered 3; it is only ever digits.
ATTRIBUTES = {"a": frozenset({"href", "title"}), "ol": frozenset({"start"})}
HEADING_SHIFT = 2

# The browser's URL parser drops leading C0 controls and spaces, and tabs and
# newlines anywhere, before it reads the scheme: so must we.
_IGNORED_LEADING = "".join(chr(c) for c in range(0x21))
_TAB_OR_NEWLINE = re.compile(r"[\t\n\r]")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")


def safe_link(url: str) -> bool:
    """True for an http(s) or mailto URL, or one with no scheme (relative)."""
    bare = _TAB_OR_NEWLINE.sub("", url.lstrip(_IGNORED_LEADING))
    scheme = _SCHEME.match(bare)
    return scheme is None or scheme.group(1).lower() in SCHEMES


class _Markdown(MarkdownIt):
    """CommonMark with tables, no raw HTML, no images, and links held to `safe_link`."""

    def __init__(self) -> None:
        super().__init__("commonmark", {"html": False, "linkify": False, "typographer": False})
        self.enable("table")
        # An image would load from anywhere the author likes; its alt text and
        # target stay readable as a link after the "!".
        self.disable("image")

    def validateLink(self, url: str) -> bool:
        # markdown-it's hook for every link destination, after entities are decoded;
        # a refused link stays in the page as its source text.
        return safe_link(url)


def _shift_headings(tokens: list[Token]) -> None:
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1:]) + HEADING_SHIFT, 6)}"


@functools.lru_cache(maxsize=4096)
def description_html(source: str) -> str:
    """The sanitized HTML of a job's Markdown description ("" for none).

    Cached: every job answer and every summary snapshot renders the same few
    descriptions again. Both objects are built per miss (well under a
    millisecond) so nothing mutable is shared between threads or callers.
    """
    if not source.strip():
        return ""
    parser = _Markdown()
    env: dict[str, object] = {}
    tokens = parser.parse(source, env)
    _shift_headings(tokens)
    html = parser.renderer.render(tokens, parser.options, env)
    # The second layer: whatever the renderer let through, only these tags,
    # attributes and link schemes reach the page, and every link gets rel.
    cleaner = nh3.Cleaner(
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes=SCHEMES,
        link_rel="noopener noreferrer",
        strip_comments=True,
    )
    return cleaner.clean(html)
