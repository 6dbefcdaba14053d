"""Text from other people, shown safely.

Card names, class names, config names and file names come from whoever made the file. Printed as
they are, control characters in them reach the terminal: an ANSI or OSC escape can recolour, hide or
rewrite what is on the screen, a newline can forge a line of its own (``error: …``, ``verified:
True``), and Unicode bidirectional overrides reorder what is read. Rich would also read ``[bold]``
in them as markup, and a stray ``[/bold]`` crashes it.

* :func:`printable` escapes every such character visibly (``\\x1b``, ``\\u202e``), and with
  ``one_line`` also newlines and tabs;
* :func:`unsafe_characters` says which a string has, for validators that refuse them (card fields,
  config names);
* :class:`SafeConsole` is the console exmodel prints with: no markup, no highlighting, no emoji
  codes, every string argument passed through :func:`printable`, and no line wrapping when the
  output is not a terminal (a log line stays one line).
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.table import Table

# C0 controls but tab and newline, DEL, C1 controls, and the Unicode format characters that reorder
# or hide text (bidi embeddings, overrides and isolates, marks, zero-width joiners, BOM).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_UNSAFE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return {9: "\\t", 10: "\\n", 13: "\\r"}.get(code, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: Any, *, one_line: bool = False) -> str:
    """``str(text)`` with control and text-reordering characters escaped visibly; with ``one_line``
    newlines, carriage returns and tabs too."""
    return (_UNSAFE_LINE if one_line else _UNSAFE).sub(_escape, str(text))


def unsafe_characters(text: str) -> list[str]:
    """The characters of ``text`` that :func:`printable` with ``one_line`` would escape, escaped."""
    return [_escape(m) for m in _UNSAFE_LINE.finditer(text)]


class SafeConsole(Console):
    """A rich console for text that may hold other people's strings; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("highlight", False)
        kwargs.setdefault("emoji", False)
        super().__init__(**kwargs)
        if not self.is_terminal:
            self.soft_wrap = True

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)


class SafeTable(Table):
    """A rich table whose title, caption, headers and string cells pass through :func:`printable`."""

    def __init__(self, *headers: Any, **kwargs: Any) -> None:
        for key in ("title", "caption"):
            if isinstance(kwargs.get(key), str):
                kwargs[key] = printable(kwargs[key])
        super().__init__(*(printable(h) if isinstance(h, str) else h for h in headers), **kwargs)

    def add_column(self, header: Any = "", *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().add_column(printable(header) if isinstance(header, str) else header, *args, **kwargs)

    def add_row(self, *cells: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().add_row(*(printable(c) if isinstance(c, str) else c for c in cells), **kwargs)


def quoted(text: Any) -> str:
    """``'text'`` on one line with unsafe characters escaped: a name from a file inside a message."""
    return f"'{printable(text, one_line=True)}'"
