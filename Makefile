# One-command set-up: `make run` (demo) and `make test` (every test). Both create .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser hosts run test bench clean

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

# the tests across network hosts (tests/hosts, bank chaos --hosts) drop packets with Debian's
# nftables and delay them with Toxiproxy (a Go module, built into the venv); without root or
# Go they skip, saying why
TOXIPROXY := github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0
hosts: $(STAMP)
	@[ "$$(id -u)" != 0 ] || command -v nft >/dev/null || { \
	  apt-get update -q && env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables; }
	@[ -x $(BIN)/toxiproxy-server ] || ! command -v go >/dev/null || { \
	  GOBIN=$(CURDIR)/$(VENV)/gobin go install $(TOXIPROXY) && \
	  mv $(VENV)/gobin/server $(BIN)/toxiproxy-server && rmdir $(VENV)/gobin; }

test: $(STAMP) browser hosts
	$(BIN)/python -m pytest -q -ra --durations=20

bench: $(STAMP)
	$(BIN)/bank bench

clean:
	rm -rf $(VENV) .venv-peer .state build *.egg-info
