"""`evacctl up`: the whole control plane in the foreground on one machine.

Uses EVACUATE_KAFKA_BOOTSTRAP / EVACUATE_DATABASE_URL when set, otherwise starts the
embedded broker and PostgreSQL (its data directory under the user's data dir, kept
across restarts). Supervises the detector, planner, templater and API processes:
one that dies is restarted with backoff; Ctrl-C or SIGTERM stops all of them."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.common.embedded import default_data_dir
from services.evacctl.stack import Stack

SUPERVISED = ("detector", "planner", "templater", "api")


@dataclass
class Backoff:
    delay: float = 1.0
    next_start: float = 0.0
    started: float = field(default_factory=time.monotonic)


def admin_token(data_dir: Path) -> str:
    """The API tokens of the embedded setup, made once and kept in the data dir."""
    path = data_dir / "api-tokens"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(f"admin:{secrets.token_hex(16)},reader:{secrets.token_hex(16)}\n")
        path.chmod(0o600)
    return path.read_text().strip()


def main(api_port: int | None = None, heartbeat_interval: float | None = None, profile: str | None = None) -> int:
    api_port = api_port or int(os.environ.get("EVACUATE_API_PORT", "8780"))
    heartbeat_interval = heartbeat_interval or float(os.environ.get("EVACUATE_HEARTBEAT_INTERVAL", "1.0"))
    profile = profile or os.environ.get("EVACUATE_PROFILE", "production")
    data_dir = default_data_dir()
    workdir = data_dir / "run"
    stack = Stack(workdir, heartbeat_interval=heartbeat_interval, profile=profile)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tokens = os.environ.get("EVACUATE_API_TOKENS") or admin_token(data_dir)
    stack.extra_env.update(EVACUATE_API_PORT=str(api_port), EVACUATE_API_TOKENS=tokens)
    try:
        stack.start_infra()
        print(f"broker    {stack.kafka_bootstrap} ({'embedded tansu' if stack.broker else 'configured'})", flush=True)
        where = f"embedded PostgreSQL, data in {data_dir / 'pgdata'}" if stack.postgres else "configured"
        print(f"database  {where}", flush=True)
        backoff: dict[str, Backoff] = {}
        for name in SUPERVISED:
            stack.spawn(name, f"services.{name}")
            backoff[name] = Backoff()
        print(f"API       http://127.0.0.1:{api_port}/v1  (OpenAPI: http://127.0.0.1:{api_port}/docs)", flush=True)
        print(f"dashboard http://127.0.0.1:{api_port}/dashboard#token=<token>  (or: evacctl watch)", flush=True)
        if not os.environ.get("EVACUATE_API_TOKENS"):
            print(f"tokens    {data_dir / 'api-tokens'} (role:token pairs; evacctl reads EVACUATE_API_TOKEN)",
                  flush=True)
        print(f"logs      {workdir / 'logs'}", flush=True)
        print("running; Ctrl-C stops everything", flush=True)
        while not stopping:
            now = time.monotonic()
            for name in SUPERVISED:
                proc, b = stack.procs[name], backoff[name]
                if proc.poll() is None:
                    if now - b.started > 60:
                        b.delay = 1.0  # it stayed up: forget earlier crashes
                    continue
                if b.next_start == 0.0:
                    b.next_start = now + b.delay
                    print(f"{name} exited with {proc.returncode}; restarting in {b.delay:.0f}s", flush=True)
                elif now >= b.next_start:
                    stack.spawn(name, f"services.{name}")
                    b.delay, b.next_start, b.started = min(b.delay * 2, 30.0), 0.0, now
            time.sleep(0.2)
        print("stopping ...", flush=True)
        return 0
    finally:
        stack.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
