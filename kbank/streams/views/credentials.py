"""TLS and SASL for the views' Faust (aiokafka) clients, from the same librdkafka-style settings.

The engine's confluent-kafka clients take KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_*
straight through (kbank.streams.kafka.client_config). aiokafka has no such dictionary, so the same
settings are translated here into Faust credentials: one set of environment variables for every
client in the project.
"""
from __future__ import annotations

import ssl
from typing import Mapping

from faust.auth import GSSAPICredentials, SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI")
_FALSE = ("false", "0", "no")


class UnsupportedSecurity(ValueError):
    """A security setting the views' clients cannot honour; refusing beats connecting in clear."""


def ssl_context(conf: Mapping[str, object]) -> ssl.SSLContext:
    """A client TLS context: CA (ssl.ca.location), client certificate and key, verification."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=_str(conf, "ssl.ca.location"))
    cert = _str(conf, "ssl.certificate.location")
    if cert is not None:
        ctx.load_cert_chain(cert, keyfile=_str(conf, "ssl.key.location"),
                            password=_str(conf, "ssl.key.password"))
    if (_str(conf, "ssl.endpoint.identification.algorithm") or "https").lower() == "none":
        ctx.check_hostname = False
    if (_str(conf, "enable.ssl.certificate.verification") or "true").lower() in _FALSE:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def faust_credentials(conf: Mapping[str, object]) -> CredentialsT | None:
    """Faust broker_credentials for a librdkafka-style client config; None for plaintext."""
    protocol = (_str(conf, "security.protocol") or "PLAINTEXT").upper()
    if protocol not in _PROTOCOLS:
        raise UnsupportedSecurity(f"security.protocol {protocol!r}: expected one of {_PROTOCOLS}")
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(conf) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return SSLCredentials(context)
    mechanism = (_str(conf, "sasl.mechanism") or _str(conf, "sasl.mechanisms") or "PLAIN").upper()
    if mechanism not in _MECHANISMS:
        raise UnsupportedSecurity(f"sasl.mechanism {mechanism!r} is not supported by the views "
                                  f"workers; use one of {_MECHANISMS}")
    if mechanism == "GSSAPI":
        return GSSAPICredentials(
            kerberos_service_name=_str(conf, "sasl.kerberos.service.name") or "kafka",
            kerberos_domain_name=_str(conf, "sasl.kerberos.domain.name"),
            ssl_context=context, mechanism=mechanism)
    username, password = _str(conf, "sasl.username"), _str(conf, "sasl.password")
    if not username or password is None:
        raise UnsupportedSecurity(f"{protocol} with {mechanism} needs KAFKA_SASL_USERNAME and "
                                  "KAFKA_SASL_PASSWORD")
    return SASLCredentials(username=username, password=password, ssl_context=context,
                           mechanism=mechanism)


def _str(conf: Mapping[str, object], key: str) -> str | None:
    value = conf.get(key)
    return None if value is None else str(value)
