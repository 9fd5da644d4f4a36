"""A tiny HTTP client for tests (real HTTP over loopback, no client library quirks).

Requests carry `Authorization: Bearer <key>` with the key of the views the test started
(conftest's views_factory makes an operator key and calls use_key); `key=None` sends none."""
from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

import orjson

from kbank.streams.apikeys import bearer


_DEFAULT = object()
_key: str | None = None


def use_key(token: str | None) -> None:
    """The API key requests send from now on unless told otherwise."""
    global _key
    _key = token


def current_key() -> str | None:
    return _key


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self):  # noqa: ANN201
        return orjson.loads(self.body)


def request(method: str, url: str, body: bytes | None = None, timeout: float = 30.0,
            headers: dict[str, str] | None = None, key: object = _DEFAULT) -> Response:
    """One request; a body goes as application/json unless `headers` say otherwise; with
    the current key unless `key` names another (None: no Authorization header)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        sent = {"Content-Type": "application/json"} if body is not None else {}
        sent.update(bearer(_key if key is _DEFAULT else key))
        conn.request(method, path, body=body, headers={**sent, **(headers or {})})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def get_json(url: str, timeout_s: float = 60.0, key: object = _DEFAULT):  # noqa: ANN201
    """GET a 200 JSON answer, retrying 503s (rebalancing, behind) until the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        resp = request("GET", url, key=key)
        if resp.status == 200:
            return resp.json()
        if resp.status != 503 or time.monotonic() > deadline:
            raise AssertionError(f"GET {url}: {resp.status} {resp.body[:300]!r}")
        time.sleep(0.2)


def known_key(url: str, token: str, timeout_s: float = 30.0) -> str:
    """`token`, once the views worker at `url` knows it (a key just made reaches every worker
    within a fetch of auth.keys, not at once)."""
    deadline = time.monotonic() + timeout_s
    while request("GET", f"{url}/openapi.yaml", key=token).status == 401:
        assert time.monotonic() < deadline, f"the views at {url} did not learn the key"
        time.sleep(0.1)
    return token
