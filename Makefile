# One-command set-up: `make run` (demo) and `make test` (every test). Both create .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser run test bench clean

$(STAMP): pyproject.toml kbank/streams/broker/pom.xml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m kbank.streams.broker install   # Apache Kafka's jars from Maven Central (needs Java 17+)
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/bank up --demo

# the console's browser tests drive Debian's Chromium (never a downloaded browser)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -ra --durations=20

bench: $(STAMP)
	$(BIN)/bank bench

clean:
	rm -rf $(VENV) .venv-peer .state build *.egg-info
