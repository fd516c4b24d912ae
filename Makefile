# hsm-vault: two commands on a fresh Debian machine.
#   make demo   sets everything up and runs the whole flow with local SoftHSM tokens
#   make test   sets everything up and runs the whole test suite (ruff, mypy, pytest)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := softhsm2 opensc age gnupg openssl curl postgresql sqlite3 \
	pcscd vsmartcard-vpcd ykcs11 yubico-piv-tool pcsc-tools \
	swtpm tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtss2-tcti-swtpm0 libtpm2-pkcs11-1 dbus \
	opencryptoki libnss3 libnss3-tools p11-kit util-linux wrk
STAMP := $(VENV)/.installed

.PHONY: all deps venv demo test lint bench bench-store bench-server clean

all: test

# Debian packages, installed only when missing (root or sudo).
deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: deps venv
	scripts/demo.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test: deps venv lint
	$(BIN)/pytest -q

bench: deps venv
	$(BIN)/python benchmarks/bench_crypt.py

bench-store: deps venv
	$(BIN)/python benchmarks/bench_store.py

# The server under load (wrk): card find, blob put+get, GET /v1/app and a floor, SQLite and
# PostgreSQL, at 1/10/100/200 keep-alive clients. Run it when `uptime` is low (performance.md).
bench-server: deps venv
	$(BIN)/python benchmarks/bench_server.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
