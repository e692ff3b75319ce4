"""Job descriptions: hostile Markdown comes out as inert HTML, ordinary Markdown still renders."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest

from apsis_server.web.markdown import description_html, safe_link

# Each payload tries to run script: call alert, set window.__xss, or change the
# title. tests/e2e/test_xss.py puts all of them in one description and opens it
# in a real browser.
XSS: list[tuple[str, str]] = [
    # The two that got through the old hand-written renderer.
    ("nested parens", "[x](a(https://e/autofocus/onfocus=alert(1)//)"),
    ("nested parens flag", "[x](a(https://e/autofocus/onfocus=window.__xss=1//)"),
    ("control char", "[x](\x01javascript:alert(1))"),
    ("control char bracketed", "[x](<\x01javascript:alert(1)>)"),
    ("tab", "[x](\tjavascript:alert(1))"),
    ("tab bracketed", "[x](<\tjavascript:alert(1)>)"),
    ("newline", "[x](java\nscript:alert(1))"),
    ("newline bracketed", "[x](<java\nscript:alert(1)>)"),
    ("tab entity", "[x](java&#x09;script:alert(1))"),
    ("newline escaped", "[x](java%0ascript:alert(1))"),
    ("leading spaces", "[x](   javascript:alert(1))"),
    # Raw HTML.
    ("script", "<script>window.__xss=1</script>"),
    ("script inline", "a <script>alert(1)</script> b"),
    ("img onerror", "<img src=x onerror=alert(1)>"),
    ("svg onload", "<svg onload=alert(1)>"),
    ("details ontoggle", "<details open ontoggle=window.__xss=1>x</details>"),
    ("a javascript", '<a href="javascript:alert(1)">x</a>'),
    ("a entity", '<a href="&#x6A;avascript:alert(1)">x</a>'),
    ("iframe", '<iframe src="javascript:alert(1)"></iframe>'),
    ("iframe srcdoc", "<iframe srcdoc=\"<script>document.title='pwned'</script>\"></iframe>"),
    ("style", "<style>body{display:none}</style>"),
    ("object", '<object data="javascript:alert(1)"></object><embed src="javascript:alert(1)">'),
    ("form", '<form action="javascript:alert(1)"><button>go</button></form>'),
    ("math", '<math><mi xlink:href="javascript:alert(1)">x</mi></math>'),
    ("base", '<base href="javascript:/">'),
    ("meta refresh", '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">'),
    ("split tags", "<<script>script>alert(1)<</script>/script>"),
    ("comment", "<!-- --><script>alert(1)</script>"),
    ("html block", "<div onmouseover=alert(1)>\n\nhover\n\n</div>"),
    # Links and images with bad schemes.
    ("javascript", "[x](javascript:window.__xss=1)"),
    ("mixed case", "[x](JaVaScRiPt:alert(1))"),
    ("entity", "[x](&#106;avascript:alert(1))"),
    ("hex entity", "[x](&#x6A;avascript:alert(1))"),
    ("colon entity", "[x](javascript&colon;alert(1))"),
    ("data", "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)"),
    ("vbscript", "[x](vbscript:msgbox(1))"),
    ("autolink", "<javascript:alert(1)>"),
    ("autolink upper", "<JAVASCRIPT:document.title='pwned'>"),
    ("autolink data", "<data:text/html,<script>alert(1)</script>>"),
    ("reference", "[x][r1]\n\n[r1]: javascript:alert(1)"),
    ("reference bracketed", '[x][r2]\n\n[r2]: <javascript:alert(1)> "t"'),
    ("collapsed reference", "[r3][]\n\n[r3]: data:text/html,<script>alert(1)</script>"),
    ("image", "![x](javascript:alert(1))"),
    ("image onerror", '![x](https://e/x.png" onerror="alert(1))'),
    ("image data", "![x](data:image/svg+xml,<svg onload=alert(1)>)"),
    # Attributes through syntaxes some renderers accept.
    ("attrs braces", "[x](https://e.example/){onclick=alert(1)}"),
    ("heading attrs", "# title {onmouseover=alert(1)}"),
    ("extra attr", '[x](https://e.example/ "t" onclick="alert(1)")'),
    # Breaking out of a title or a label.
    ("title script", '[x](https://e.example/ "\\"><script>alert(1)</script>")'),
    ("title img", "[x](https://e.example/ '\"><img src=x onerror=alert(1)>')"),
    ("label html", "[a<img src=x onerror=alert(1)>](https://e.example/)"),
    ("table cell", "| a |\n|---|\n| <img src=x onerror=alert(1)> |"),
    ("code span", "`<script>alert(1)</script>`"),
    ("fenced", '```html" onload="alert(1)\n<script>alert(1)</script>\n```'),
    ("mailto html", "[x](mailto:a@b.example?body=<script>alert(1)</script>)"),
]

ALLOWED_SCHEMES = {"", "http", "https", "mailto"}


class Elements(HTMLParser):
    """Every start tag with its attributes, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(html)
    parser.close()
    return parser.tags


def assert_inert(html: str) -> None:
    assert "<script" not in html.lower()
    for tag, attrs in elements(html):
        assert tag not in {"script", "style", "iframe", "img", "svg", "object", "embed", "form"}
        for name in attrs:
            assert not name.startswith("on"), (tag, attrs)
            assert name in {"href", "title", "rel", "start"}, (tag, attrs)
        for name in ("href", "src", "action", "formaction", "xlink:href"):
            url = attrs.get(name)
            if url is not None:
                # urlsplit strips and drops what the WHATWG URL parser does.
                assert urlsplit(url).scheme.lower() in ALLOWED_SCHEMES, (tag, attrs)


@pytest.mark.parametrize(("name", "source"), XSS, ids=[name for name, _ in XSS])
def test_hostile_markdown_is_inert(name: str, source: str) -> None:
    assert_inert(description_html(source))


def test_the_whole_corpus_at_once_is_inert() -> None:
    assert_inert(description_html("\n\n".join(source for _, source in XSS)))


def test_raw_html_is_shown_as_text() -> None:
    html = description_html("<script>alert(1)</script>")
    assert html == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n"


def test_a_refused_link_stays_readable_as_text() -> None:
    assert description_html("[x](javascript:alert(1))") == "<p>[x](javascript:alert(1))</p>\n"


ORDINARY = """\
# Nightly report

Builds the **nightly** report, *quickly*, with `make report`.

- one
- two

3. third
4. fourth

> a quote

See [the site](https://example.com/a?b=1&c=2 "Site"), [a run](/runs/r1) or <mailto:ops@example.com>.

```
echo <b>
```

| a | b |
|:--|--:|
| 1 | 2 |

---
"""


def test_ordinary_markdown_renders() -> None:
    html = description_html(ORDINARY)
    assert "<h3>Nightly report</h3>" in html  # two levels down: the page's headings stay biggest
    assert "<strong>nightly</strong>" in html
    assert "<em>quickly</em>" in html
    assert "<code>make report</code>" in html
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in html
    assert '<ol start="3">\n<li>third</li>' in html
    assert "<blockquote>\n<p>a quote</p>\n</blockquote>" in html
    assert (
        '<a href="https://example.com/a?b=1&amp;c=2" title="Site" rel="noopener noreferrer">'
        "the site</a>"
    ) in html
    assert '<a href="/runs/r1" rel="noopener noreferrer">a run</a>' in html
    assert '<a href="mailto:ops@example.com" rel="noopener noreferrer">' in html
    assert "<pre><code>echo &lt;b&gt;\n</code></pre>" in html
    assert "<th>a</th>" in html and "<td>2</td>" in html  # alignment styles dropped
    assert "<hr>" in html
    assert_inert(html)


@pytest.mark.parametrize(
    ("source", "tag"),
    [("# a", "h3"), ("## a", "h4"), ("### a", "h5"), ("#### a", "h6"), ("###### a", "h6")],
)
def test_headings_are_shifted_down(source: str, tag: str) -> None:
    assert description_html(source) == f"<{tag}>a</{tag}>\n"


def test_every_link_gets_rel() -> None:
    html = description_html("[a](https://a.example/) <https://b.example/> [c](c.html)")
    links = [attrs for tag, attrs in elements(html) if tag == "a"]
    assert len(links) == 3
    assert all(attrs["rel"] == "noopener noreferrer" for attrs in links)


@pytest.mark.parametrize("source", ["", "   ", "\n\n"])
def test_no_description_is_empty(source: str) -> None:
    assert description_html(source) == ""


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("https://example.com/", True),
        ("HTTP://example.com/", True),
        ("mailto:a@example.com", True),
        ("/runs/r1", True),
        ("report.html#top", True),
        ("//example.com/", True),
        ("%01javascript:alert(1)", True),  # a relative path to the browser too
        ("javascript:alert(1)", False),
        ("JaVaScRiPt:alert(1)", False),
        ("\x01javascript:alert(1)", False),
        (" \x1fjavascript:alert(1)", False),
        ("java\tscript:alert(1)", False),
        ("java\nscript:alert(1)", False),
        ("java\rscript:alert(1)", False),
        ("data:text/html,x", False),
        ("vbscript:msgbox(1)", False),
        ("file:///etc/passwd", False),
        ("ftp://example.com/", False),
    ],
)
def test_safe_link(url: str, safe: bool) -> None:
    assert safe_link(url) is safe
    # The oracle: Python's WHATWG-like URL splitting agrees.
    assert (urlsplit(url).scheme.lower() in ALLOWED_SCHEMES) is safe


def test_renders_are_cached() -> None:
    source = "A description rendered for every request."
    first = description_html(source)
    hits = description_html.cache_info().hits
    assert description_html(source) is first
    assert description_html.cache_info().hits == hits + 1
