"""A small client for the controller's REST API (the demo, the tests, scripts)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


class ApiError(RuntimeError):
    def __init__(self, status: int, body: dict | str):
        self.status = status
        self.body = body
        reason = body.get("error", {}).get("reason") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {reason}")


class Client:
    def __init__(self, base: str, token: str, timeout: float = 10.0):
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ApiError(exc.code, payload) from None
        return json.loads(raw) if raw else None

    def get(self, path: str):
        return self._call("GET", path)

    def post(self, path: str, body):
        return self._call("POST", path, body)

    def delete(self, path: str):
        return self._call("DELETE", path)

    def up(self) -> bool:
        try:
            self.get("/v1/openapi.json")
            return True
        except (OSError, ApiError):
            return False
