"""Settings are validated at start-up, and only client settings reach librdkafka."""
from __future__ import annotations

import subprocess
import sys

import pytest

from streams.config import Settings, SettingsError
from streams.kafka import check_client_env, client_config


@pytest.mark.parametrize("name, value, message", [
    ("BANK_PARTITIONS", "eight", "BANK_PARTITIONS must be an integer, got 'eight'"),
    ("BANK_BATCH_MAX_MS", "-5", "BANK_BATCH_MAX_MS must not be negative"),
    ("BANK_UNSAFE_NO_DEDUPE", "maybe", "BANK_UNSAFE_NO_DEDUPE must be one of 1/0"),
    ("BANK_FAULT_FREEZE_POINT", "after-manifest", "must be one of before-batch, before-commit"),
    ("BANK_LOG_LEVEL", "LOUD", "BANK_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR"),
    ("BANK_WEB_WAIT_TIMEOUT_S", "soon", "BANK_WEB_WAIT_TIMEOUT_S must be a number"),
])
def test_a_bad_setting_is_named_with_what_it_accepts(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message.replace("/", ".")):
        Settings.from_env()


def test_the_cli_refuses_a_bad_setting_with_a_message_not_a_traceback():
    done = subprocess.run([sys.executable, "-m", "streams.cli", "topics"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "BANK_PARTITIONS": "eight"}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: BANK_PARTITIONS must be an integer, got 'eight'"


def test_kafkas_own_script_variables_are_not_client_settings(monkeypatch):
    monkeypatch.setenv("KAFKA_HEAP_OPTS", "-Xmx1G")
    monkeypatch.setenv("KAFKA_OPTS", "-Dfoo=bar")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    conf = client_config(Settings(bootstrap_servers="127.0.0.1:9"))
    assert conf == {"bootstrap.servers": "127.0.0.1:9", "security.protocol": "PLAINTEXT",
                    "sasl.mechanism": "PLAIN"}
    check_client_env()   # all of them are valid librdkafka settings


def test_a_misspelled_client_setting_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("KAFKA_SASL_USRNAME", "bank")
    with pytest.raises(SettingsError, match="KAFKA_SASL_USRNAME is not a Kafka client setting"):
        check_client_env()
