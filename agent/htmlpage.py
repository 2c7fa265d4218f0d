"""HTML pages where Sophos's JSON belongs: is a body one, what its title says, whose it likely is.

Sophos Central's API hosts and its id host answer JSON, errors included. An HTML page in their
place came from something else on the way: a captive portal, a web filter's or WAF's block page,
an inspecting proxy's error page, a maintenance page. Its ``<title>`` is what a person needs to
recognise it ("Guest Wi-Fi - Please sign in", "Request Rejected"), so the agent reads the title,
with the standard library's HTML parser, from the first ``PREFIX`` bytes only, and shows at most
``MAX_TITLE`` printable characters of it; nothing else of the page is ever shown.

One kind of page is Sophos's after all: the stock error page of a gateway or load balancer in
front of the API (nginx's "502 Bad Gateway", "504 Gateway Time-out", CloudFront's "ERROR: The
request could not be satisfied"), which Sophos's own gateways send with 502, 503 and 504. A 5XX
page whose title names only its status, or that has no title, is such a page
(``is_gateway_page``); the diagnosis keeps it an outage of Sophos.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from agent.text import printable

PREFIX = 64 * 1024
"""The bytes of a body the parser reads: a title lives in the head, near the start."""
MAX_TITLE = 80
"""The most characters of a title shown anywhere."""

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_SNIFF = (b"<!doctype html", b"<html", b"<head", b"<title", b"<body")
_GATEWAY_WORDS = frozenset(
    {
        "",  # "502" alone
        "bad gateway",
        "service unavailable",
        "service temporarily unavailable",
        "gateway timeout",
        "gateway time out",
        "internal server error",
        "the request could not be satisfied",  # CloudFront, in front of AWS-hosted APIs
    }
)
_GATEWAY_TITLE = re.compile(r"^(?:error\s*)?(?:http\s*)?(?:5\d\d\s*)?(?:error\s*)?(?P<words>.*)$")


def page_title(body: bytes, content_type: str = "") -> str | None:
    """The title of the HTML page ``body`` is ('' for a page without one), or None when the
    body is not an HTML page: empty, JSON (whatever the Content-Type claims), or anything else
    that neither says nor looks like HTML."""
    head = body[:PREFIX]
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not start or start[:1] in (b"{", b"["):
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in _HTML_TYPES and not start.startswith(_SNIFF):
        return None
    reader = _TitleReader()
    try:
        reader.feed(head.decode("utf-8", "replace"))
        reader.close()
    except Exception:  # the parser is lenient; whatever it trips on, the page has no title
        return ""
    return one_line(reader.title)


def one_line(text: str) -> str:
    """A title as one line of printable characters, uncut (whoever shows it redacts it first,
    then cuts it at ``MAX_TITLE``: a secret cut in half would no longer be recognised).
    Backticks become quotes, so a title never turns into code in a remedy."""
    cleaned = printable(text).replace("`", "'")
    return " ".join(cleaned.split())


def is_gateway_page(status: int, title: str) -> bool:
    """A 5XX page whose title names only an HTTP error (or that has none): a gateway's stock
    error page, as Sophos's own gateways send, rather than someone's block or portal page."""
    if not 500 <= status <= 599:
        return False
    normal = " ".join(re.sub(r"[^a-z0-9]+", " ", title.lower()).split())
    match = _GATEWAY_TITLE.match(normal)
    return match is not None and match["words"].strip() in _GATEWAY_WORDS


def described(title: str) -> str:
    """How the log and the messages name a page."""
    return f'an HTML page titled "{title}"' if title else "an HTML page without a title"


class _TitleReader(HTMLParser):
    """Collects the text of the first ``<title>`` element and ignores everything else."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self._inside = False
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title" and not self._done:
            self._inside = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._inside:
            self._inside, self._done = False, True

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.title += data
