"""Load a template bundle: the template text and the body of each mapped file.

The only module of the templater that reads files. Two layouts:

* A directory::

      template.evt                          the template text
      files/etc/httpd/includes/server.inc   body of /etc/httpd/includes/server.inc

  Every file under ``files/`` is the body of the guest path made of its
  relative path with a leading ``/``.

* A single file: the template text, then one section per mapped file, each
  opened by a line ``--- file /guest/path`` and running to the next such line
  or the end of the file::

      metadata { IP_ADDRESS; }
      map { /etc/motd }
      --- file /etc/motd
      Welcome to {{IP_ADDRESS}}

  The template's line numbers are those of the file. A body cannot contain a
  line that starts with ``--- file ``.

Text is read as UTF-8 with line endings kept as they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from services.templater._lexer import TemplateError

TEMPLATE_FILE = "template.evt"
FILES_DIR = "files"
_SECTION_RE = re.compile(r"^--- file (.*?)[ \t]*\r?$", re.MULTILINE)


def split_bundle(text: str) -> tuple[str, dict[str, str]]:
    """Split single-file bundle text into the template text and guest path -> body."""
    sections = list(_SECTION_RE.finditer(text))
    if not sections:
        return text, {}
    bodies: dict[str, str] = {}
    for index, section in enumerate(sections):
        path = section.group(1)
        if path in bodies:
            line = text.count("\n", 0, section.start()) + 1
            raise TemplateError("a second '--- file' section for this path", line=line,
                                column=1, item=path)
        end = sections[index + 1].start() if index + 1 < len(sections) else len(text)
        body_start = min(section.end() + 1, end)  # skip the header's newline
        bodies[path] = text[body_start:end]
    return text[: sections[0].start()], bodies


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def load_bundle(path: str | os.PathLike[str]) -> tuple[str, dict[str, str]]:
    """The template text and guest path -> body of the bundle at ``path``."""
    root = Path(path)
    if not root.is_dir():
        return split_bundle(_read_text(root))
    text = _read_text(root / TEMPLATE_FILE)
    files = root / FILES_DIR
    bodies: dict[str, str] = {}
    if files.is_dir():
        for file in sorted(files.rglob("*")):
            if file.is_file():
                bodies["/" + file.relative_to(files).as_posix()] = _read_text(file)
    return text, bodies
