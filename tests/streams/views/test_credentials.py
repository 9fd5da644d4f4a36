"""The views' Faust clients take the same KAFKA_* security settings as the engine's clients."""
from __future__ import annotations

import socket
import ssl
import threading

import pytest
import trustme
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from kbank.streams.config import Settings
from kbank.streams.kafka import client_config
from kbank.streams.views.credentials import UnsupportedSecurity, faust_credentials, ssl_context


def test_plaintext_needs_no_credentials():
    assert faust_credentials({}) is None
    assert faust_credentials({"security.protocol": "plaintext"}) is None


def test_sasl_ssl_from_the_environment_reaches_aiokafka(monkeypatch):
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "bank")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    auth = credentials_to_aiokafka_auth(faust_credentials(client_config(Settings.from_env())))
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("bank", "s3cret")
    assert isinstance(auth["ssl_context"], ssl.SSLContext)


def test_sasl_plaintext_has_no_tls():
    auth = credentials_to_aiokafka_auth(faust_credentials({
        "security.protocol": "SASL_PLAINTEXT", "sasl.username": "u", "sasl.password": "p"}))
    assert (auth["security_protocol"], auth["sasl_mechanism"]) == ("SASL_PLAINTEXT", "PLAIN")
    assert auth["ssl_context"] is None


@pytest.mark.parametrize("conf, words", [
    ({"security.protocol": "TLS"}, "security.protocol"),
    ({"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}, "OAUTHBEARER"),
    ({"security.protocol": "SASL_PLAINTEXT", "sasl.username": "u"}, "KAFKA_SASL_PASSWORD"),
])
def test_settings_the_views_cannot_honour_are_refused_by_name(conf, words):
    with pytest.raises(UnsupportedSecurity, match=words):
        faust_credentials(conf)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> str:
    """Run one TLS handshake over loopback; return the server's view of the client's certificate."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["peer"] = tls.getpeercert()
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname()) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="broker.bank.test"):
                pass
    finally:
        thread.join(5)
        listener.close()
    return str(seen.get("peer"))


def test_the_ca_and_client_certificate_are_used_in_a_real_handshake(ca, tmp_path):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("broker.bank.test").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as a locked-down cluster asks
    client = ca.issue_cert("bank-views")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))

    creds = faust_credentials({"security.protocol": "SSL", "ssl.ca.location": str(tmp_path / "ca.pem"),
                               "ssl.certificate.location": str(tmp_path / "client.pem"),
                               "ssl.key.location": str(tmp_path / "client.key")})
    assert "bank-views" in _handshake(server_ctx, creds.context)


def test_a_broker_signed_by_another_ca_is_not_trusted(ca, tmp_path):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("broker.bank.test").configure_cert(server_ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server_ctx, ssl_context({"ssl.ca.location": str(tmp_path / "ca.pem")}))
    # and only an explicit opt-out skips verification
    unverified = ssl_context({"ssl.ca.location": str(tmp_path / "ca.pem"),
                              "enable.ssl.certificate.verification": "false"})
    assert _handshake(server_ctx, unverified) == "None"
