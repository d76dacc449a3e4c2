#!/usr/bin/env bash
# QEMU + libvirtd for the `qemu` tests (tests/executor/test_qemu.py); the line from
# ../shared/notes/qemu-on-this-machine.md (no libvirt-daemon-system: it pulls in systemd).
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends \
  libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 libvirt-clients libvirt-dev pkg-config \
  busybox-static cpio
# A privileged (root) embedded QEMU driver parses its built-in default user before it reads
# qemu.conf; libvirt-daemon-system would create that user, but it pulls in systemd.
getent passwd libvirt-qemu >/dev/null || $SUDO useradd --system --no-create-home --shell /usr/sbin/nologin \
  --user-group libvirt-qemu
