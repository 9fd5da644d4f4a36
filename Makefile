# One-command set-up: `make run` (demo) and `make test` (every test). Both create .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml streams/broker/pom.xml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m streams.broker install   # Apache Kafka's jars from Maven Central (needs Java 17+)
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/bank up --demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

bench: $(STAMP)
	$(BIN)/bank bench

clean:
	rm -rf $(VENV) .state build *.egg-info
