"""Package rendered files as an OpenStack-style config drive (ISO 9660).

Layout, as cloud-init's ConfigDrive datasource reads it::

    openstack/latest/meta_data.json   {"uuid", "name", "hostname",
                                       "files": [{"path": guest path,
                                                  "content_path": "/content/0000"}]}
    openstack/content/0000 ...        one file per guest path, sorted by path

The volume identifier is ``config-2``. Each name is written twice: an ISO
9660 level-3 name (upper case) and a Joliet name, which keeps the real
lower-case name and is what Linux (isofs) and Windows (cloudbase-init) read.
Rock Ridge is left out: it adds nothing these names need and halves the
number of drives built per second.
pycdlib stamps the creation time into the image, so two builds of the same
files differ in their timestamps only.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pycdlib

from services.templater._parser import path_problem

VOLUME_ID = "config-2"
_DIRECTORIES = ("openstack", "openstack/latest", "openstack/content")
_META_DATA = "openstack/latest/meta_data.json"


def _iso_name(path: str, *, is_file: bool) -> str:
    """The ISO 9660 level-3 name: upper case; a file has one dot and a ';1' version."""
    upper = "/" + path.upper()
    if not is_file:
        return upper.replace(".", "_")
    return upper + (";1" if "." in upper.rsplit("/", 1)[-1] else ".;1")


def _add_file(iso: Any, path: str, data: bytes) -> None:
    iso.add_fp(
        io.BytesIO(data),
        len(data),
        _iso_name(path, is_file=True),
        joliet_path="/" + path,
    )


def build_config_drive(
    files: Mapping[str, bytes | str], *, uuid: str, name: str, hostname: str
) -> bytes:
    """An ISO image holding ``files`` (guest path -> content; text is UTF-8)."""
    entries: list[dict[str, str]] = []
    contents: list[tuple[str, bytes]] = []
    for index, guest_path in enumerate(sorted(files)):
        problem = path_problem(guest_path)
        if problem is not None:
            raise ValueError(problem)
        content = files[guest_path]
        data = content.encode() if isinstance(content, str) else bytes(content)
        content_path = f"/content/{index:04d}"
        entries.append({"path": guest_path, "content_path": content_path})
        contents.append(("openstack" + content_path, data))
    meta = {"uuid": uuid, "name": name, "hostname": hostname, "files": entries}
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=VOLUME_ID, joliet=3)
    for directory in _DIRECTORIES:
        iso.add_directory(
            _iso_name(directory, is_file=False), joliet_path="/" + directory
        )
    _add_file(iso, _META_DATA, json.dumps(meta, indent=2, sort_keys=True).encode())
    for path, data in contents:
        _add_file(iso, path, data)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def _read(iso: Any, path: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, joliet_path="/" + path)
    return out.getvalue()


@contextlib.contextmanager
def _opened(image: bytes) -> Iterator[Any]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        yield iso
    finally:
        iso.close()


def volume_id(image: bytes) -> str:
    """The volume identifier of an ISO image, trailing blanks removed."""
    with _opened(image) as iso:
        return bytes(iso.pvd.volume_identifier).decode("ascii").rstrip()


def read_meta_data(image: bytes) -> dict[str, Any]:
    """The drive's openstack/latest/meta_data.json."""
    with _opened(image) as iso:
        meta: dict[str, Any] = json.loads(_read(iso, _META_DATA))
        return meta


def read_config_drive(image: bytes) -> dict[str, bytes]:
    """Guest path -> content, as listed in the drive's meta_data.json."""
    with _opened(image) as iso:
        meta = json.loads(_read(iso, _META_DATA))
        return {
            entry["path"]: _read(iso, "openstack" + entry["content_path"])
            for entry in meta["files"]
        }
