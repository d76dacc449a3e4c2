"""Config drives rendered per second: a template of 20 items and 5 mapped files.

The template is parsed once; each iteration renders every mapped file with
fresh built-ins and builds the ISO (pycdlib). Goal: >= 500 drives/s.

    .venv/bin/python bench/templater.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import time

from services.templater.configdrive import build_config_drive, read_config_drive
from services.templater.template import Template, parse, render

USER_ITEMS = [
    'HTML_ROOT : string(1,255) : "/var/www/"',
    "ADMIN_EMAIL : email : required",
    'LISTEN_PORT : int(1,65535) : "8080"',
    'TLS : bool : "true"',
    'GATEWAY : ip : "10.0.0.1"',
    'ALLOWED_NET : cidr : "10.0.0.0/8"',
    'SERVER_ALIAS : hostname : "www.example.com"',
    'LOG_LEVEL : enum("debug","info","warn","error") : "info"',
    'WORKERS : int(1,64) : "8"',
    'MAX_BODY : string(1,16) : "10m"',
    'DB_HOST : hostname : "db.internal"',
    'DB_PORT : int(1,65535) : "5432"',
    'DB_NAME : string(1,63) : "app"',
    'CACHE_TTL : int(0,86400) : "300"',
]
BUILTIN_ITEMS = ["IP_ADDRESS : ip", "IP_ADDRESSES", "MAC_ADDRESS", "HOSTNAME : hostname",
                 "INSTANCE_UUID", "INSTANCE_NAME"]
NAMES = [line.split(" ")[0] for line in USER_ITEMS + BUILTIN_ITEMS]
PATHS = [f"/etc/app/conf.d/{i:02d}-part.conf" for i in range(5)]
TEXT = (
    "metadata {\n"
    + "".join(f"  {line};\n" for line in BUILTIN_ITEMS + USER_ITEMS)
    + "}\nmap {\n"
    + "".join(f"  {path}\n" for path in PATHS)
    + "}\n"
)
# Each body: a header, every token once, and some plain configuration text (~1.5 KiB).
BODY = "# generated for {{INSTANCE_NAME}}; literal {{{{ kept\n" + "".join(
    f"{name.lower()} = {{{{{name}}}}}\n" for name in NAMES
) + "".join(f"option_{i} = value number {i}\n" for i in range(40))
BODIES = {path: BODY for path in PATHS}
VALUES = {"ADMIN_EMAIL": "ops@example.com", "LISTEN_PORT": "443"}


def builtins(n: int) -> dict[str, str]:
    return {
        "IP_ADDRESS": f"10.1.{n // 250 % 250}.{n % 250 + 1}",
        "IP_ADDRESSES": f"10.1.0.{n % 250 + 1},2001:db8::{n:x}",
        "MAC_ADDRESS": f"52:54:00:00:{n // 256 % 256:02x}:{n % 256:02x}",
        "HOSTNAME": f"vm-{n}",
        "INSTANCE_UUID": f"00000000-0000-4000-8000-{n:012d}",
        "INSTANCE_NAME": f"vm-{n}",
        "HOST": "compute-2",
    }


def one_drive(template: Template, n: int) -> bytes:
    b = builtins(n)
    files = render(template, BODIES, b, VALUES)
    return build_config_drive(
        files, uuid=b["INSTANCE_UUID"], name=b["INSTANCE_NAME"], hostname=b["HOSTNAME"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    template = parse(TEXT)
    assert len(template.items) == 20 and len(template.paths) == 5
    sample = read_config_drive(one_drive(template, 0))
    assert set(sample) == set(PATHS) and b"{{INSTANCE_NAME" not in sample[PATHS[0]]
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < args.seconds:
        one_drive(template, count)
        count += 1
    render_only, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        render(template, BODIES, builtins(render_only), VALUES)
        render_only += 1
    print(f"{count / elapsed:.0f} config drives/s ({count} in {elapsed:.1f} s; "
          f"20 items, 5 files of {len(BODY)} chars; render alone {render_only:.0f}/s)")


if __name__ == "__main__":
    main()
