"""Check metadata values and mapped-file bodies; substitute ``{{NAME}}`` tokens.

In a body, ``{{NAME}}`` is replaced by the item's value and ``{{{{`` is a
literal ``{{``. Any other ``{{`` is refused, so a misspelt token such as
``{{ NAME }}`` never reaches a guest unreplaced. Substitution is one pass:
a value that contains ``{{X}}`` is delivered as is.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

from services.templater._lexer import IDENT_RE, TemplateError, encode_string
from services.templater._parser import BUILTINS, Item, Template

_OPEN_RE = re.compile(r"\{\{")
_TOKEN_RE = re.compile(r"\{\{(" + IDENT_RE.pattern + r")\}\}")


@dataclass(frozen=True, slots=True)
class BodyToken:
    """A ``{{NAME}}`` in a body, at a 1-based line and column of that body."""

    name: str
    line: int
    column: int


Segment = str | BodyToken


@functools.lru_cache(maxsize=256)
def compile_body(path: str, body: str) -> tuple[Segment, ...]:
    """Split a body into literal text and tokens; raises on a malformed ``{{``."""
    segments: list[Segment] = []
    literal: list[str] = []
    pos = 0
    while (match := _OPEN_RE.search(body, pos)) is not None:
        start = match.start()
        literal.append(body[pos:start])
        if body.startswith("{{{{", start):
            literal.append("{{")
            pos = start + 4
            continue
        token = _TOKEN_RE.match(body, start)
        if token is None and body.startswith("{{{", start):
            literal.append("{")  # "{{{NAME}}}" is "{" + token + "}"
            pos = start + 1
            continue
        line = body.count("\n", 0, start) + 1
        column = start - (body.rfind("\n", 0, start) + 1) + 1
        if token is None:
            snippet = body[start : start + 20].split("\n")[0]
            raise TemplateError(
                f"malformed token {snippet!r}: write {{{{NAME}}}} for a value "
                "or {{{{ for a literal {{",
                line=line,
                column=column,
                path=path,
            )
        if literal:
            segments.append("".join(literal))
            literal = []
        segments.append(BodyToken(token.group(1), line, column))
        pos = token.end()
    literal.append(body[pos:])
    text = "".join(literal)
    if text:
        segments.append(text)
    return tuple(segments)


def escape_body(text: str) -> str:
    """The body that renders to ``text`` unchanged."""
    return text.replace("{{", "{{{{")


def _item_error(item: Item, message: str) -> TemplateError:
    return TemplateError(message, line=item.line, column=item.column, item=item.name)


def validate_values(template: Template, values: Mapping[str, str]) -> dict[str, str]:
    """The user values of every non-built-in item, defaults applied.

    Refuses a value for an undeclared item, any value for a built-in, a value
    that breaks its item's type and a missing value for a required item.
    """
    declared = {item.name: item for item in template.items}
    for name in sorted(values):
        item = declared.get(name)
        if name in BUILTINS:
            message = (
                f"{name} is a built-in: it takes its value from the instance "
                "and cannot be overridden"
            )
            if item is None:
                raise TemplateError(message, line=0, column=0, item=name)
            raise _item_error(item, message)
        if item is None:
            names = ", ".join(i.name for i in template.items if not i.builtin) or "none"
            raise TemplateError(
                f"no item {name} is declared in metadata (items that take values: {names})",
                line=0,
                column=0,
                item=name,
            )
    result: dict[str, str] = {}
    for item in template.items:
        if item.builtin:
            continue
        value = values.get(item.name)
        if value is None:
            if item.required:
                raise _item_error(item, f"{item.name} is required but has no value")
            value = item.default if item.default is not None else ""
        else:
            problem = item.type.check(value)
            if problem is not None:
                raise _item_error(item, f"value {encode_string(value)} breaks {item.type}: {problem}")
        result[item.name] = value
    return result


def check_bodies(template: Template, bodies: Mapping[str, str]) -> None:
    """Every mapped path has a body whose tokens all name declared items.

    A built-in is usable in a body only when metadata declares it.
    """
    declared = {item.name for item in template.items}
    for mapped in template.paths:
        body = bodies.get(mapped.path)
        if body is None:
            raise TemplateError(
                f"mapped file {mapped.path} has no body",
                line=mapped.line,
                column=mapped.column,
                item=mapped.path,
            )
        for segment in compile_body(mapped.path, body):
            if isinstance(segment, BodyToken) and segment.name not in declared:
                hint = " (a built-in: declare it in metadata to use it)" * (
                    segment.name in BUILTINS
                )
                raise TemplateError(
                    f"token {{{{{segment.name}}}}} names no item declared in metadata{hint}",
                    line=segment.line,
                    column=segment.column,
                    item=segment.name,
                    path=mapped.path,
                )


def resolve(
    template: Template, builtins: Mapping[str, str], values: Mapping[str, str]
) -> dict[str, str]:
    """The value of every declared item: built-ins from the instance, the rest from the user."""
    resolved = validate_values(template, values)
    for item in template.items:
        if not item.builtin:
            continue
        value = builtins.get(item.name)
        if value is None:
            raise _item_error(item, f"built-in {item.name} has no value from the instance")
        problem = item.type.check(value)
        if problem is not None:
            raise _item_error(
                item, f"built-in value {encode_string(value)} breaks {item.type}: {problem}"
            )
        resolved[item.name] = value
    return resolved


def render(
    template: Template,
    bodies: Mapping[str, str],
    builtins: Mapping[str, str],
    values: Mapping[str, str],
) -> dict[str, str]:
    """Guest path -> rendered text for every mapped file."""
    check_bodies(template, bodies)
    resolved = resolve(template, builtins, values)
    return {
        mapped.path: "".join(
            resolved[s.name] if isinstance(s, BodyToken) else s
            for s in compile_body(mapped.path, bodies[mapped.path])
        )
        for mapped in template.paths
    }
