"""The table of template cases (cases.json): each renders exactly or fails at a position.

A case has ``template`` (a list of lines), ``bodies``, ``builtins``, ``values`` and
either ``rendered`` (guest path -> text) or ``error`` (line, column, item, an
optional path, and a substring of the message).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from services.templater.bundle import load_bundle, split_bundle
from services.templater.template import (
    TemplateError,
    check_bodies,
    format_template,
    parse,
    render,
)

CASES: list[dict[str, Any]] = json.loads((Path(__file__).parent / "cases.json").read_text())
EXAMPLE = Path(__file__).parents[2] / "examples" / "templates" / "httpd"
SPEC_TEXT = CASES[0]["template"]


def _run(case: dict[str, Any]) -> dict[str, str]:
    template = parse("\n".join(case["template"]) + "\n")
    return render(template, case["bodies"], case["builtins"], case["values"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case: dict[str, Any]) -> None:
    if "rendered" in case:
        assert _run(case) == case["rendered"]
        return
    expected = case["error"]
    with pytest.raises(TemplateError) as caught:
        _run(case)
    error = caught.value
    assert (error.line, error.column, error.item) == (
        expected["line"],
        expected["column"],
        expected["item"],
    ), str(error)
    assert error.path == expected.get("path")
    assert expected["contains"] in error.message, str(error)
    if error.line:
        assert str(error).startswith(
            f"{error.path + ': ' if error.path else ''}line {error.line}, column {error.column}"
        )


def test_error_text_quotes_line_column_and_item() -> None:
    with pytest.raises(TemplateError) as caught:
        parse('metadata {\n  IP_ADDRESS;\n  HTML_ROOT : string(5,255) : "x";\n}\n')
    assert str(caught.value) == (
        "line 3, column 31, item 'HTML_ROOT': "
        'default "x" breaks string(5,255): length 1 is below the minimum 5'
    )


def test_error_survives_pickling() -> None:
    error = TemplateError("bad", line=2, column=3, item="A", path="/f")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.message, copy.line, copy.column, copy.item, copy.path, str(copy)) == (
        "bad", 2, 3, "A", "/f", "/f: line 2, column 3, item 'A': bad"
    )


def test_example_bundle_is_the_spec_example() -> None:
    text, bodies = load_bundle(EXAMPLE)
    template = parse(text)
    assert template == parse("\n".join(SPEC_TEXT))
    check_bodies(template, bodies)
    rendered = render(template, bodies, {"IP_ADDRESS": "10.0.0.7"}, {})
    assert rendered == {
        "/etc/httpd/includes/server.inc": '<VirtualHost 10.0.0.7:*>\nDocumentRoot "/var/www/";\n'
    }


def test_single_file_bundle(tmp_path: Path) -> None:
    text, bodies = load_bundle(EXAMPLE)
    sections = "".join(f"--- file {path}\n{body}" for path, body in bodies.items())
    single = tmp_path / "httpd.evt"
    single.write_text(text + sections)
    assert load_bundle(single) == (text, bodies)


def test_single_file_bundle_refuses_a_path_twice() -> None:
    with pytest.raises(TemplateError) as caught:
        split_bundle("map { /a }\n--- file /a\nx\n--- file /a\ny\n")
    assert (caught.value.line, caught.value.item) == (4, "/a")


def test_format_is_canonical() -> None:
    template = parse("\n".join(SPEC_TEXT))
    assert format_template(template) == "\n".join(SPEC_TEXT) + "\n"
