# The two commands of the README: `make demo` and `make test`. Both do all set-up first.
.PHONY: setup demo test check lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/evacctl demo

test: setup lint
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check services tests bench

check: test
