"""Properties of the template language, checked with hypothesis."""

from __future__ import annotations

import ipaddress
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from services.templater.template import (
    BUILTINS,
    Item,
    MappedPath,
    Template,
    TemplateError,
    ValueType,
    escape_body,
    format_template,
    parse,
    render,
    validate_values,
)
from services.templater.types import (
    BoolType,
    CidrType,
    EmailType,
    EnumType,
    HostnameType,
    IntType,
    IpType,
    StringType,
)

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(
    lambda n: n not in BUILTINS
)
TEXT = st.text(max_size=12)
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
HOSTNAMES = st.lists(LABEL, min_size=1, max_size=3).map(".".join)


def _network(address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int) -> str:
    return str(ipaddress.ip_network(f"{address}/{prefix % (address.max_prefixlen + 1)}", False))


@st.composite
def string_types(draw: st.DrawFn) -> tuple[ValueType, st.SearchStrategy[str]]:
    if draw(st.booleans()):
        return StringType(), TEXT
    low = draw(st.integers(0, 5))
    high = draw(st.integers(low, 12))
    return StringType(low, high), st.text(min_size=low, max_size=high)


@st.composite
def int_types(draw: st.DrawFn) -> tuple[ValueType, st.SearchStrategy[str]]:
    if draw(st.booleans()):
        return IntType(), st.integers().map(str)
    low = draw(st.integers(-1000, 1000))
    high = draw(st.integers(low, low + 1000))
    return IntType(low, high), st.integers(low, high).map(str)


TYPES: st.SearchStrategy[tuple[ValueType, st.SearchStrategy[str]]] = st.one_of(
    string_types(),
    int_types(),
    st.just((BoolType(), st.sampled_from(["true", "false"]))),
    st.just((IpType(), st.ip_addresses().map(str))),
    st.just((CidrType(), st.builds(_network, st.ip_addresses(), st.integers(0, 128)))),
    st.just((HostnameType(), HOSTNAMES)),
    st.just((EmailType(), st.builds("{}@{}.org".format, LABEL, HOSTNAMES))),
    st.lists(TEXT, min_size=1, max_size=4, unique=True).map(
        lambda cs: (EnumType(tuple(cs)), st.sampled_from(cs))
    ),
)


@st.composite
def items(draw: st.DrawFn, name: str) -> tuple[Item, st.SearchStrategy[str]]:
    value_type, valid = draw(TYPES)
    if name in BUILTINS:
        return Item(name, value_type), valid
    kind = draw(st.sampled_from(["default", "required", "neither"]))
    if kind == "neither" and value_type.check("") is None:
        return Item(name, value_type), valid
    if kind == "required":
        return Item(name, value_type, required=True), valid
    return Item(name, value_type, default=draw(valid)), valid


SEGMENT = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/"),
    min_size=1,
    max_size=8,
).filter(lambda s: s not in (".", ".."))
PATHS = st.lists(SEGMENT, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))


@st.composite
def templates(draw: st.DrawFn) -> tuple[Template, dict[str, st.SearchStrategy[str]]]:
    names = draw(st.lists(NAMES | st.sampled_from(sorted(BUILTINS)), max_size=6, unique=True))
    drawn = [draw(items(name)) for name in names]
    paths = draw(st.lists(PATHS, max_size=4, unique=True))
    template = Template(tuple(i for i, _ in drawn), tuple(MappedPath(p) for p in paths))
    return template, {item.name: valid for item, valid in drawn}


@settings(max_examples=300)
@given(templates())
def test_format_then_parse_round_trips(drawn: tuple[Template, object]) -> None:
    template, _ = drawn
    assert parse(format_template(template)) == template


@st.composite
def rendering_cases(
    draw: st.DrawFn, literals: st.SearchStrategy[str]
) -> tuple[Template, dict[str, str], dict[str, str], dict[str, str], dict[str, str]]:
    """A template, bodies, built-ins, values and the text each path must render to."""
    template, valid = draw(templates())
    resolved: dict[str, str] = {}
    builtins: dict[str, str] = {}
    values: dict[str, str] = {}
    for item in template.items:
        given_value = item.builtin or item.required or draw(st.booleans())
        if not given_value:
            resolved[item.name] = item.default if item.default is not None else ""
            continue
        value = draw(valid[item.name])
        (builtins if item.builtin else values)[item.name] = resolved[item.name] = value
    names = [item.name for item in template.items]
    bodies: dict[str, str] = {}
    expected: dict[str, str] = {}
    for mapped in template.paths:
        pieces = draw(st.lists(literals | st.sampled_from(names).map(lambda n: "\0" + n)
                               if names else literals, max_size=8))
        body, text = [], []
        for piece in pieces:
            if piece.startswith("\0"):
                body.append("{{" + piece[1:] + "}}")
                text.append(resolved[piece[1:]])
            else:
                body.append(escape_body(piece))
                text.append(piece)
        bodies[mapped.path], expected[mapped.path] = "".join(body), "".join(text)
    return template, bodies, builtins, values, expected


LITERALS = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"))


@settings(max_examples=300)
@given(rendering_cases(LITERALS))
def test_render_replaces_tokens_and_keeps_escaped_text(
    case: tuple[Template, dict[str, str], dict[str, str], dict[str, str], dict[str, str]],
) -> None:
    template, bodies, builtins, values, expected = case
    assert render(template, bodies, builtins, values) == expected
    validated = validate_values(template, values)
    assert validate_values(template, validated) == validated  # callers may validate first
    assert render(template, bodies, builtins, validated) == expected


@settings(max_examples=300)
@given(rendering_cases(st.text(st.characters(blacklist_characters="{\0"))))
def test_render_never_leaves_a_token_of_a_defined_item(
    case: tuple[Template, dict[str, str], dict[str, str], dict[str, str], dict[str, str]],
) -> None:
    template, bodies, builtins, values, _ = case
    if any("{" in v for v in [*builtins.values(), *values.values()]):
        return  # a value is delivered as is, even one that looks like a token
    defined = {item.name for item in template.items}
    for text in render(template, bodies, builtins, values).values():
        left = set(re.findall(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}", text))
        assert not left & defined


@given(st.text())
def test_parse_raises_only_template_errors(text: str) -> None:
    try:
        parse(text)
    except TemplateError as error:
        assert error.line >= 1 and error.column >= 1


SPEC = parse('metadata { IP_ADDRESS; A : "a"; } map { /f }')


@given(st.text(st.sampled_from("{}A_ x\n")))
def test_bodies_render_or_fail_with_a_position(body: str) -> None:
    try:
        render(SPEC, {"/f": body}, {"IP_ADDRESS": "10.0.0.1"}, {})
    except TemplateError as error:
        assert error.path == "/f" and error.line >= 1 and error.column >= 1
