"""Text from outside (API answers, headers, pages, OpenSSL's words) made safe to show.

Every place that shows such text first makes it printable here, then bounds it its own way (a
label cuts, a message redacts before it cuts, a title keeps one line), so that a control
character or a terminal escape from a hostile answer never reaches a log line, a label or a page.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with every character that is not printable (newlines, escapes, NULs) a space."""
    return "".join(ch if ch.isprintable() else " " for ch in text)
