"""The server-template language (DESIGN §5): parse, print, validate, render.

Pure: no I/O. ``bundle.load_bundle`` reads a template from disk and
``configdrive.build_config_drive`` packages rendered files for the guest.

    >>> t = parse('metadata { IP_ADDRESS; } map { /etc/motd }')
    >>> render(t, {"/etc/motd": "ip {{IP_ADDRESS}}\\n"}, {"IP_ADDRESS": "10.0.0.5"}, {})
    {'/etc/motd': 'ip 10.0.0.5\\n'}
"""

from services.templater._lexer import TemplateError
from services.templater._parser import (
    BUILTINS,
    Item,
    MappedPath,
    Template,
    format_template,
    parse,
)
from services.templater._render import check_bodies, escape_body, render, validate_values
from services.templater.types import ValueType

__all__ = [
    "BUILTINS",
    "Item",
    "MappedPath",
    "Template",
    "TemplateError",
    "ValueType",
    "check_bodies",
    "escape_body",
    "format_template",
    "parse",
    "render",
    "validate_values",
]
