# The two commands of the README: `make demo` and `make test`. Both do all set-up first.
.PHONY: setup demo test check lint bench qemu

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/evacctl demo

test: setup qemu lint
	.venv/bin/python -m pytest -q --durations=15

# QEMU for the one real-guest test; if it cannot be installed that test skips and says why.
qemu:
	@command -v qemu-system-x86_64 >/dev/null 2>&1 || bash scripts/install-qemu.sh >/dev/null \
	  || echo "qemu: could not be installed; the qemu test will be skipped"

lint:
	.venv/bin/ruff check services tests bench

check: test
