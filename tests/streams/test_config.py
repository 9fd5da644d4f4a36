"""Settings are validated at start-up, and only client settings reach librdkafka."""
from __future__ import annotations

import subprocess
import sys

import pytest

from kbank.streams.config import Settings, SettingsError
from kbank.streams.kafka import check_client_env, client_config


@pytest.mark.parametrize("name, value, message", [
    ("BANK_PARTITIONS", "eight", "BANK_PARTITIONS: Input should be a valid integer.*got 'eight'"),
    ("BANK_PARTITIONS", "0", "BANK_PARTITIONS: Input should be greater than or equal to 1"),
    ("BANK_REPLICATION_FACTOR", "0", "BANK_REPLICATION_FACTOR: Input should be greater than or equal to 1"),
    ("BANK_BATCH_MAX_MS", "-5", "BANK_BATCH_MAX_MS: Input should be greater than or equal to 1"),
    ("BANK_UNSAFE_NO_DEDUPE", "maybe", "BANK_UNSAFE_NO_DEDUPE: Input should be a valid boolean"),
    ("BANK_FAULT_FREEZE_POINT", "after-manifest", "should be 'before-batch' or 'before-commit'"),
    ("BANK_LOG_LEVEL", "LOUD", "BANK_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ("BANK_WEB_WAIT_TIMEOUT_S", "soon", "BANK_WEB_WAIT_TIMEOUT_S: Input should be a valid number"),
    ("BANK_WEB_WAIT_TIMEOUT_S", "-5", "BANK_WEB_WAIT_TIMEOUT_S: Input should be greater than 0"),
    ("BANK_WEB_WAIT_TIMEOUT_S", "nan", "BANK_WEB_WAIT_TIMEOUT_S: Input should be a finite number"),
    ("BANK_ENGINE_STALL_EXIT_S", "inf", "BANK_ENGINE_STALL_EXIT_S: Input should be a finite number"),
    ("BANK_ENGINE_METRICS_PORT", "70000", "BANK_ENGINE_METRICS_PORT: Input should be less than"),
    ("BANK_PARTITONS", "8", r"BANK_PARTITONS is not a setting \(did you mean BANK_PARTITIONS\?\)"),
    ("BANK_UNSAFE_NO_DEDUPE", "1", "testing-only.*BANK_UNSAFE_NO_DEDUPE; set BANK_TEST_MODE=1"),
])
def test_a_bad_setting_is_named_with_what_it_accepts(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        Settings.from_env()


def test_settings_are_checked_when_replaced_too_and_case_is_forgiven(monkeypatch):
    from dataclasses import replace

    from pydantic import ValidationError

    monkeypatch.setenv("BANK_LOG_LEVEL", "info")
    settings = Settings.from_env()
    assert settings.log_level == "INFO"
    with pytest.raises(ValidationError):
        replace(settings, partitions=0)
    with pytest.raises(ValidationError):
        replace(settings, unsafe_no_dedupe=True)          # not in test mode
    assert replace(settings, unsafe_no_dedupe=True, test_mode=True).unsafe_no_dedupe
    monkeypatch.setenv("BANK_API_KEY", "bk_secret")
    assert "bk_secret" not in repr(Settings.from_env())   # a secret never reaches a log line


def test_the_cli_refuses_a_bad_setting_with_a_message_not_a_traceback():
    done = subprocess.run([sys.executable, "-m", "kbank.streams.cli", "topics"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "BANK_PARTITIONS": "eight"}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: BANK_PARTITIONS: Input should be a valid integer")
    assert "Traceback" not in done.stderr


def test_kafkas_own_script_variables_are_not_client_settings(monkeypatch):
    monkeypatch.setenv("KAFKA_HEAP_OPTS", "-Xmx1G")
    monkeypatch.setenv("KAFKA_OPTS", "-Dfoo=bar")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    settings = Settings.from_env(bootstrap_servers="127.0.0.1:9")
    assert client_config(settings) == {"bootstrap.servers": "127.0.0.1:9",
                                       "security.protocol": "PLAINTEXT", "sasl.mechanism": "PLAIN"}
    check_client_env(settings)   # all of them are valid librdkafka settings


def test_a_misspelled_client_setting_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("KAFKA_SASL_USRNAME", "bank")
    with pytest.raises(SettingsError, match="KAFKA_SASL_USRNAME is not a Kafka client setting"):
        check_client_env(Settings.from_env())
