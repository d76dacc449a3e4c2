"""The config drive: build an ISO with pycdlib, read it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.templater.bundle import load_bundle
from services.templater.configdrive import (
    build_config_drive,
    read_config_drive,
    read_meta_data,
    volume_id,
)
from services.templater.template import parse, render

EXAMPLE = Path(__file__).parents[2] / "examples" / "templates" / "httpd"
UUID = "6f1e1b1c-4f5a-4b2e-9a55-1c9e3b1f0a42"


def test_build_then_read_back() -> None:
    files: dict[str, bytes | str] = {
        "/etc/httpd/includes/server.inc": "<VirtualHost 10.0.0.7:*>\n",
        "/etc/a-rather-long-directory-name/with.several.dots.conf": "x = 1\n",
        "/opt/binary": b"\x00\xff\x10",
    }
    image = build_config_drive(files, uuid=UUID, name="web-1", hostname="web-1.example")
    assert volume_id(image) == "config-2"
    assert read_config_drive(image) == {
        path: data.encode() if isinstance(data, str) else data for path, data in files.items()
    }
    meta = read_meta_data(image)
    assert (meta["uuid"], meta["name"], meta["hostname"]) == (UUID, "web-1", "web-1.example")
    assert meta["files"] == [
        {"path": path, "content_path": f"/content/{index:04d}"}
        for index, path in enumerate(sorted(files))
    ]


def test_empty_drive() -> None:
    image = build_config_drive({}, uuid=UUID, name="n", hostname="h")
    assert read_config_drive(image) == {}


def test_refuses_a_relative_guest_path() -> None:
    with pytest.raises(ValueError, match="not absolute"):
        build_config_drive({"etc/motd": "x"}, uuid=UUID, name="n", hostname="h")


def test_rendered_example_on_a_drive() -> None:
    text, bodies = load_bundle(EXAMPLE)
    rendered = render(parse(text), bodies, {"IP_ADDRESS": "10.0.0.7"}, {})
    image = build_config_drive(rendered, uuid=UUID, name="web-1", hostname="web-1")
    assert read_config_drive(image) == {
        "/etc/httpd/includes/server.inc": b'<VirtualHost 10.0.0.7:*>\nDocumentRoot "/var/www/";\n'
    }
