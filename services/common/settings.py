"""Settings from ``EVACUATE_*`` environment variables: one pydantic-settings model per
service, all sharing the connection settings. Invalid settings fail fast at start with
a message naming the variable and what is valid (exit code 2)."""

from __future__ import annotations

import socket
import sys
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.errors import ConfigError


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVACUATE_", extra="ignore")

    kafka_bootstrap: str = Field(
        "", description="Kafka bootstrap servers (host:port,...). Empty: none configured."
    )
    database_url: str = Field(
        "", description="PostgreSQL URL (postgresql://user@host:port/db). Empty: none configured."
    )
    fetch_max_wait_ms: int = Field(
        20,
        ge=1,
        le=10_000,
        description="Kafka consumer fetch wait. Keep small (10-20) on the embedded broker, "
        "which does not answer a waiting fetch early (see docs).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or one JSON object per line (time, level, logger, message, "
        "service, host, message_id, evacuation_id)"
    )
    health_port: int = Field(0, ge=0, le=65535, description="Port of /healthz and /metrics; 0: off")


class DetectorSettings(CommonSettings):
    heartbeat_interval: float = Field(1.0, gt=0, le=60, description="Seconds between heartbeats")
    misses_before_suspect: int = Field(3, ge=1, le=100)
    profile: Literal["production", "aggressive"] = Field(
        "production", description="Timing profile of the failure detector"
    )
    tick_interval: float = Field(0.1, gt=0, le=5)
    shared_storage: str = Field(
        "/var/lib/evacuate/shared", description="Shared storage path (the executors' storage heartbeats are read here)"
    )
    storage_scan_interval: float = Field(
        0.25, gt=0, le=10, description="Seconds between scans of the storage heartbeat files"
    )
    # Credentials and limits of the out-of-band fence drivers (redfish, ipmi). The host's
    # fence_target (from its heartbeat) names only the BMC: it travels on the bus and is
    # stored in the hosts table, so it must never carry a password.
    fence_username: str = Field("", description="BMC user for the redfish and ipmi fences")
    fence_password: SecretStr = Field(SecretStr(""), description="BMC password for the redfish and ipmi fences")
    fence_password_file: str = Field(
        "", description="File holding the BMC password (read at each fence; wins over fence_password)"
    )
    fence_verify_tls: bool = Field(True, description="Verify the BMC's TLS certificate (redfish)")
    fence_ca_file: str = Field("", description="CA bundle for the BMC certificates (redfish); empty: system CAs")
    fence_request_timeout: float = Field(10.0, gt=0, le=300, description="Seconds per BMC request")
    fence_confirm_timeout: float = Field(
        25.0,
        gt=0,
        le=600,
        description="Seconds a redfish/ipmi fence may take, power-off confirmation included; "
        "capped just below the profile's fence timeout",
    )
    fence_poll_interval: float = Field(1.0, gt=0, le=30, description="Seconds between power-state polls")
    fence_ipmitool: str = Field("ipmitool", description="ipmitool executable (name on PATH or path)")
    fence_ipmi_interface: str = Field("lanplus", description="ipmitool interface (-I)")


class PlannerSettings(CommonSettings):
    max_attempts: int = Field(3, ge=1, le=20, description="Rebuild attempts per instance")
    heartbeat_interval: float = Field(
        1.0, gt=0, le=60,
        description="Seconds between hosts' heartbeats: a host not heard for 1.5 of them is not chosen as a target"
        " while the other hosts can take the VMs")
    result_timeout: float = Field(
        120.0, gt=0, description="Seconds to wait for a RebuildResult before retrying"
    )


class TemplaterSettings(CommonSettings):
    shared_storage: str = Field(
        "", description="Shared storage path where config drives too large to send inline are staged; empty: none")
    inline_config_drive_bytes: int = Field(
        262_144, ge=0, le=900_000, description="Config drives up to this size travel inside the order")


class ExecutorSettings(CommonSettings):
    host: str = Field(default_factory=socket.gethostname, description="This compute host's name")
    libvirt_uri: str = Field("qemu:///system", description="libvirt connection URI")
    emulator: str = Field(
        "", description="This host's QEMU binary, written into the <emulator> of every domain defined here from "
        "an order; empty: keep the order's, which must then exist on this host"
    )
    shared_storage: str = Field(
        "/var/lib/evacuate/shared", description="Path of the shared storage, same on every host"
    )
    heartbeat_interval: float = Field(1.0, gt=0, le=60)
    fence_driver: Literal["process", "redfish", "ipmi", "manual"] = "process"
    fence_target: str = Field("", description="BMC address for redfish/ipmi; empty for process")
    max_concurrent_rebuilds: int = Field(8, ge=1, le=256)
    order_max_age: float = Field(
        120.0, gt=0, description="Seconds after which a rebuild order is dropped unexecuted: by then the planner "
        "has placed the VM again (keep it at the planner's result_timeout)"
    )
    inventory_interval: float = Field(
        5.0, gt=0, description="Seconds between full inventory reports (also sent on change)"
    )
    isolation_timeout: float = Field(
        10.0, gt=0, le=3600, description="Seconds without reaching the broker before the isolation response"
    )
    isolation_response: Literal["none", "shutdown", "power-off"] = Field(
        "none", description="What an isolated host does to its HA domains: none, shutdown (ACPI, then "
        "destroy after isolation_shutdown_timeout) or power-off (destroy at once)"
    )
    isolation_shutdown_timeout: float = Field(
        30.0, gt=0, le=3600, description="Seconds a shutdown isolation response waits before destroying"
    )


class ApiSettings(CommonSettings):
    api_host: str = Field("127.0.0.1", description="Address the status API listens on")
    api_port: int = Field(8780, ge=1, le=65535, description="Port of the status API")
    api_tokens: str = Field(
        "", description="Bearer tokens as role:token pairs, comma-separated (roles: admin, reader)"
    )
    api_sse_keepalive: float = Field(
        15.0, gt=0, le=300, description="Seconds between keepalive comments on an idle event stream"
    )
    api_sse_queue: int = Field(
        256, ge=1, le=100_000, description="Events buffered per stream client; one that falls this far behind is"
        " dropped (told it lagged)"
    )


S = TypeVar("S", bound=CommonSettings)


def load(cls: type[S]) -> S:
    """Read settings; raise ConfigError naming the variable on a bad value."""
    try:
        return cls()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            var = "EVACUATE_" + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{var}={err.get('input')!r}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(lines)) from None


def load_or_exit(cls: type[S]) -> S:
    try:
        return load(cls)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
