"""A minimal client for the control API, as an operator's script would call it (urllib, JSON)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def call(
    port: int, method: str, path: str, body: Any = None, token: str | None = None, if_match: int | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if if_match is not None:
        req.add_header("If-Match", str(if_match))
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None
