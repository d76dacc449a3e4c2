"""Tokens of the template language, and its one error.

The lexer is pure: it turns text into tokens on demand and never reads a file.
The parser asks for a token in one of two modes because the map block is
made of guest paths (``/etc/httpd/x.conf``) that would otherwise split into
punctuation.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any


class TemplateError(Exception):
    """A template, a body or a value is refused.

    ``line`` and ``column`` are 1-based; 0 means the error has no position in
    the template (a value for an item that is not declared). ``item`` names the
    metadata item (or, for map errors, the guest path) the error is about.
    ``path`` is set when the position is inside a mapped file's body.
    """

    def __init__(
        self,
        message: str,
        *,
        line: int,
        column: int,
        item: str | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.line = line
        self.column = column
        self.item = item
        self.path = path
        super().__init__(str(self))

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {"line": self.line, "column": self.column, "item": self.item, "path": self.path}
        return (_rebuild_error, (self.message, kwargs))

    def __str__(self) -> str:
        parts: list[str] = []
        if self.line > 0:
            parts.append(f"line {self.line}, column {self.column}")
        if self.item is not None:
            parts.append(f"item {self.item!r}")
        where = ", ".join(parts)
        if self.path is not None:
            where = f"{self.path}: {where}" if where else self.path
        return f"{where}: {self.message}" if where else self.message


def _rebuild_error(message: str, kwargs: dict[str, Any]) -> TemplateError:
    return TemplateError(message, **kwargs)


class Kind(Enum):
    IDENT = "name"
    INT = "integer"
    STRING = "string"
    PUNCT = "punctuation"
    PATH = "path"
    EOF = "end of input"


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    text: str  # the source text of the token
    value: str  # decoded value (string literals unescaped)
    start: int
    end: int

    def describe(self) -> str:
        if self.kind is Kind.EOF:
            return "end of input"
        return f"{self.kind.value} {self.text!r}" if self.kind is not Kind.PUNCT else repr(self.text)


IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_RE = re.compile(r"-?[0-9]+")
_STRING_RE = re.compile(r'"(?:[^"\\\n]|\\[^\n])*"')
_SPACE_RE = re.compile(r"(?:[ \t\r\n\f\v]+|#[^\n]*)*")
_PATH_RE = re.compile(r'[^\s#{};"]+')
_PUNCT = frozenset("{}():;,")


def decode_string(literal: str) -> str:
    """Decode a string literal; its syntax is that of a JSON string."""
    value = json.loads(literal, strict=False)
    assert isinstance(value, str)
    return value


def encode_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


class Source:
    """Template text with offset -> (line, column) lookup."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def position(self, offset: int) -> tuple[int, int]:
        index = bisect.bisect_right(self._line_starts, offset) - 1
        return index + 1, offset - self._line_starts[index] + 1

    def error(self, offset: int, message: str, item: str | None = None) -> TemplateError:
        line, column = self.position(offset)
        return TemplateError(message, line=line, column=column, item=item)

    def skip_space(self, pos: int) -> int:
        match = _SPACE_RE.match(self.text, pos)
        assert match is not None
        return match.end()

    def token(self, pos: int, *, paths: bool = False, item: str | None = None) -> Token:
        """The token starting at or after ``pos`` (whitespace and comments skipped).

        With ``paths`` the lexer reads guest paths instead of names and numbers.
        """
        text = self.text
        start = self.skip_space(pos)
        if start >= len(text):
            return Token(Kind.EOF, "", "", start, start)
        char = text[start]
        if char == '"':
            match = _STRING_RE.match(text, start)
            if match is None:
                raise self.error(start, "string is not closed by '\"' on the same line", item)
            literal = match.group()
            try:
                value = decode_string(literal)
            except ValueError as exc:
                raise self.error(start, f"invalid string {literal}: {exc.args[0]}", item) from None
            return Token(Kind.STRING, literal, value, start, match.end())
        if char in _PUNCT and (not paths or char in "{};"):
            return Token(Kind.PUNCT, char, char, start, start + 1)
        if paths:
            match = _PATH_RE.match(text, start)
            if match is not None:
                return Token(Kind.PATH, match.group(), match.group(), start, match.end())
        else:
            match = IDENT_RE.match(text, start)
            if match is not None:
                return Token(Kind.IDENT, match.group(), match.group(), start, match.end())
            match = _INT_RE.match(text, start)
            if match is not None:
                return Token(Kind.INT, match.group(), match.group(), start, match.end())
        raise self.error(start, f"unexpected character {char!r}", item)
