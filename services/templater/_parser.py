"""Parse template text into a ``Template`` and print it back.

Grammar (``#`` comments and blank lines allowed anywhere)::

    template := block*                      (each block at most once)
    block    := "metadata" "{" item* "}" | "map" "{" path* "}"
    item     := NAME [":" type] [":" (STRING | "required")] ";"
    type     := "string" ["(" INT "," INT ")"] | "int" ["(" INT "," INT ")"]
              | "bool" | "ip" | "cidr" | "hostname" | "email"
              | "enum" "(" STRING ("," STRING)* ")"
    path     := absolute guest path, bare or as a STRING

STRING is a JSON string literal on one line.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from services.templater._lexer import Kind, Source, TemplateError, Token, encode_string
from services.templater.types import (
    SIMPLE_TYPES,
    TYPE_NAMES,
    EnumType,
    IntType,
    StringType,
    ValueType,
)

BUILTINS: frozenset[str] = frozenset(
    {
        "IP_ADDRESS",
        "IP_ADDRESSES",
        "MAC_ADDRESS",
        "HOSTNAME",
        "INSTANCE_UUID",
        "INSTANCE_NAME",
        "HOST",
    }
)


@dataclass(frozen=True, slots=True)
class Item:
    """A metadata item. Positions do not take part in equality."""

    name: str
    type: ValueType = field(default_factory=StringType)
    default: str | None = None
    required: bool = False
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)

    @property
    def builtin(self) -> bool:
        return self.name in BUILTINS


@dataclass(frozen=True, slots=True)
class MappedPath:
    """A guest path listed in the map block."""

    path: str
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Template:
    items: tuple[Item, ...] = ()
    paths: tuple[MappedPath, ...] = ()

    def item(self, name: str) -> Item | None:
        for item in self.items:
            if item.name == name:
                return item
        return None


class _Parser:
    def __init__(self, text: str) -> None:
        self.src = Source(text)
        self.pos = 0
        self.item: str | None = None  # the item being parsed, named in errors

    def peek(self, *, paths: bool = False) -> Token:
        return self.src.token(self.pos, paths=paths, item=self.item)

    def take(self, *, paths: bool = False) -> Token:
        token = self.peek(paths=paths)
        self.pos = token.end
        return token

    def error(self, token: Token, message: str) -> TemplateError:
        return self.src.error(token.start, message, self.item)

    def at(self, punct: str) -> bool:
        token = self.peek()
        return token.kind is Kind.PUNCT and token.text == punct

    def expect(self, punct: str, context: str) -> Token:
        token = self.take()
        if token.kind is not Kind.PUNCT or token.text != punct:
            raise self.error(token, f"expected {punct!r} {context}, found {token.describe()}")
        return token

    def template(self) -> Template:
        items: tuple[Item, ...] | None = None
        paths: tuple[MappedPath, ...] | None = None
        while (token := self.take()).kind is not Kind.EOF:
            if token.kind is Kind.IDENT and token.text == "metadata" and items is None:
                items = self.metadata(self.expect("{", "after 'metadata'"))
            elif token.kind is Kind.IDENT and token.text == "map" and paths is None:
                paths = self.map(self.expect("{", "after 'map'"))
            elif token.text in ("metadata", "map"):
                raise self.error(token, f"second {token.text!r} block")
            else:
                raise self.error(
                    token, f"expected 'metadata {{' or 'map {{', found {token.describe()}"
                )
        return Template(items or (), paths or ())

    def unterminated(self, block: str, brace: Token) -> TemplateError:
        return self.src.error(
            brace.start, f"{block} block opened here is not closed by '}}' before the end"
        )

    def metadata(self, brace: Token) -> tuple[Item, ...]:
        items: dict[str, Item] = {}
        while True:
            token = self.take()
            if token.kind is Kind.EOF:
                raise self.unterminated("metadata", brace)
            if token.kind is Kind.PUNCT and token.text == "}":
                return tuple(items.values())
            if token.kind is not Kind.IDENT:
                raise self.error(token, f"expected an item name or '}}', found {token.describe()}")
            self.item = token.text
            item = self.item_rest(token)
            if item.name in items:
                first = items[item.name]
                raise self.error(
                    token, f"duplicate item, first declared at line {first.line}, "
                    f"column {first.column}"
                )
            items[item.name] = item
            self.item = None

    def item_rest(self, name: Token) -> Item:
        line, column = self.src.position(name.start)
        value_type: ValueType = StringType()
        default: Token | None = None
        required = False
        if self.at(":"):
            self.take()
            token = self.peek()
            if token.kind is Kind.IDENT and token.text != "required":
                value_type = self.value_type()
                if self.at(":"):
                    self.take()
                    default, required = self.default_or_required("a \"default\" or 'required'")
            else:
                default, required = self.default_or_required(
                    "a type, a \"default\" or 'required'"
                )
        self.expect(";", f"after item {name.text}")
        if name.text in BUILTINS and (default is not None or required):
            where = default or name
            raise self.error(
                where, f"built-in item {name.text} takes its value from the instance; "
                "it cannot have a default or be required"
            )
        if default is not None:
            problem = value_type.check(default.value)
            if problem is not None:
                raise self.error(default, f"default {default.text} breaks {value_type}: {problem}")
        elif not required and name.text not in BUILTINS:
            problem = value_type.check("")
            if problem is not None:
                raise self.error(
                    name, f"no default and not required, but the empty value breaks "
                    f"{value_type}: {problem}; give a default or write 'required'"
                )
        return Item(
            name.text,
            value_type,
            None if default is None else default.value,
            required,
            line,
            column,
        )

    def default_or_required(self, expected: str) -> tuple[Token | None, bool]:
        token = self.take()
        if token.kind is Kind.STRING:
            return token, False
        if token.kind is Kind.IDENT and token.text == "required":
            return None, True
        raise self.error(token, f"expected {expected}, found {token.describe()}")

    def value_type(self) -> ValueType:
        name = self.take()
        if name.text in SIMPLE_TYPES:
            return SIMPLE_TYPES[name.text]
        if name.text in ("string", "int"):
            if not self.at("("):
                return StringType() if name.text == "string" else IntType()
            low, high = self.int_pair(name.text)
            try:
                return StringType(low, high) if name.text == "string" else IntType(low, high)
            except ValueError as exc:
                raise self.error(name, f"invalid {name.text} bounds: {exc}") from None
        if name.text == "enum":
            self.expect("(", "after 'enum'")
            choices = [self.take_kind(Kind.STRING, "a \"choice\"")]
            while self.at(","):
                self.take()
                choices.append(self.take_kind(Kind.STRING, "a \"choice\""))
            self.expect(")", "to close the enum choices")
            seen: set[str] = set()
            for choice in choices:
                if choice.value in seen:
                    raise self.error(choice, f"enum lists the choice {choice.text} twice")
                seen.add(choice.value)
            return EnumType(tuple(c.value for c in choices))
        raise self.error(
            name, f"unknown type {name.text!r}; valid types are {', '.join(TYPE_NAMES)}"
        )

    def take_kind(self, kind: Kind, what: str) -> Token:
        token = self.take()
        if token.kind is not kind:
            raise self.error(token, f"expected {what}, found {token.describe()}")
        return token

    def int_pair(self, type_name: str) -> tuple[int, int]:
        self.expect("(", f"after {type_name!r}")
        low = int(self.take_kind(Kind.INT, "the minimum").text)
        self.expect(",", "between the minimum and the maximum")
        high = int(self.take_kind(Kind.INT, "the maximum").text)
        self.expect(")", "after the maximum")
        return low, high

    def map(self, brace: Token) -> tuple[MappedPath, ...]:
        paths: dict[str, MappedPath] = {}
        while True:
            token = self.take(paths=True)
            if token.kind is Kind.EOF:
                raise self.unterminated("map", brace)
            if token.kind is Kind.PUNCT and token.text == "}":
                return tuple(paths.values())
            if token.kind not in (Kind.PATH, Kind.STRING):
                raise self.error(token, f"expected a guest path or '}}', found {token.describe()}")
            path = token.value
            self.item = path
            problem = path_problem(path)
            if problem is not None:
                raise self.error(token, problem)
            if path in paths:
                first = paths[path]
                raise self.error(
                    token, f"path mapped twice, first at line {first.line}, column {first.column}"
                )
            line, column = self.src.position(token.start)
            paths[path] = MappedPath(path, line, column)
            self.item = None


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a mapped guest file, or None."""
    if not path.startswith("/"):
        return f"path {path!r} is not absolute (it must start with '/')"
    if path.endswith("/") or posixpath.normpath(path) != path or path.startswith("//"):
        return f"path {path!r} is not a normalised file path (no '.', '..', '//' or trailing '/')"
    if any(ord(c) < 32 for c in path):
        return f"path {path!r} contains a control character"
    return None


def parse(text: str) -> Template:
    """Parse template text; raises ``TemplateError`` at the first problem."""
    return _Parser(text).template()


_BARE_PATH_UNSAFE = frozenset('#{};"')


def _bare(path: str) -> bool:
    """Whether the lexer reads ``path`` back as one bare path token."""
    return not any(c.isspace() or c in _BARE_PATH_UNSAFE for c in path)


def format_template(template: Template) -> str:
    """Print a template in canonical form; ``parse`` reads it back equal."""
    lines = ["metadata {"]
    for item in template.items:
        parts = [item.name]
        if item.type != StringType():
            parts.append(str(item.type))
        if item.required:
            parts.append("required")
        elif item.default is not None:
            parts.append(encode_string(item.default))
        lines.append("  " + " : ".join(parts) + ";")
    lines += ["}", "map {"]
    for mapped in template.paths:
        path = mapped.path
        lines.append("  " + (path if _bare(path) else encode_string(path)))
    lines.append("}")
    return "\n".join(lines) + "\n"
