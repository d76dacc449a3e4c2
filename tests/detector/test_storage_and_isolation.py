"""Storage heartbeats and the executor's isolation response, in process: the scanner
feeds only renewed files; the responses stop only HA domains (libvirt test driver)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.detector.storage import (
    StorageHeartbeatScanner,
    StorageHeartbeatWriter,
    heartbeat_dir,
    read_heartbeat,
)
from services.evacctl.simcluster import plan_vms, write_node
from services.executor.hypervisor import Hypervisor
from services.executor.isolation import apply_response


def test_storage_scanner_feeds_only_renewed_files(tmp_path: Path) -> None:
    """The scan behind StorageHeartbeat: a file is news only when it changes; the first
    sighting, an unchanged file and a torn or foreign file are not."""
    a, b = StorageHeartbeatWriter(str(tmp_path), "sa"), StorageHeartbeatWriter(str(tmp_path), "sb")
    scanner = StorageHeartbeatScanner(str(tmp_path))
    a.write()
    b.write()
    assert scanner.scan() == []  # first sighting: proves nothing about now
    assert scanner.scan() == []  # unchanged
    a.write()
    assert scanner.scan() == ["sa"]
    assert scanner.scan() == []
    (heartbeat_dir(tmp_path) / "sb").write_text('{"host": "sb", "ti')  # torn
    assert scanner.scan() == []
    (heartbeat_dir(tmp_path) / "sb").write_text('{"host": "other", "time": 1, "seq": 9}')  # foreign
    assert scanner.scan() == []
    b.write()
    assert scanner.scan() == ["sb"]
    assert read_heartbeat(heartbeat_dir(tmp_path) / "sb")[2] == b.seq  # type: ignore[index]


@pytest.mark.parametrize("response", ["none", "shutdown", "power-off"])
def test_isolation_response_stops_only_ha_domains(tmp_path: Path, response: str) -> None:
    """On the test driver: shutdown and power-off stop every running domain on shared
    storage and nothing else; none stops nothing."""
    vms = plan_vms(29, "dpx", 4, shutoff=1, local=1)  # 2 shared running, 1 shared off, 1 local running
    uri = write_node(tmp_path / "node.xml", vms, tmp_path / "shared", tmp_path / "local")
    hv = Hypervisor(uri, str(tmp_path / "shared"))
    stopped = apply_response(hv, response, 5.0)  # type: ignore[arg-type]
    ha = {vm.uuid for vm in vms if vm.shared and vm.running}
    assert set(stopped) == (set() if response == "none" else ha)
    running = set(hv.running_uuids())
    local = {vm.uuid for vm in vms if not vm.shared}
    assert running == (ha | local if response == "none" else local)
