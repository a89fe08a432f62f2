"""Bound service-account tokens: JWT-shaped random strings tied to a ServiceAccount's uid.

A token requested with ``boundObjectRef`` to a Pod is also tied to that pod's uid, as
kube-apiserver does it: the TokenRequest is refused (404) when the pod does not exist and
(400) when the pod does not run as the token's ServiceAccount; the token stops
authenticating (401) once no pod with that uid exists.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import threading
from dataclasses import dataclass, replace
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class IssuedToken:
    token: str
    namespace: str
    name: str
    sa_uid: str
    expires_at: dt.datetime
    pod_name: str | None = None
    pod_uid: str | None = None


class TokenIssuer:
    """Issues tokens and resolves them back; validity is checked against the live SA uid."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_token: dict[str, IssuedToken] = {}
        self.issued: list[str] = []

    def issue(self, namespace: str, name: str, sa_uid: str, seconds: int) -> IssuedToken:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        exp = now + dt.timedelta(seconds=seconds)
        header = {"alg": "RS256", "kid": secrets.token_hex(8)}
        claims = {
            "aud": ["https://kubernetes.default.svc"],
            "iss": "https://kubernetes.default.svc",
            "iat": int(now.timestamp()),
            "exp": int(exp.timestamp()),
            "jti": secrets.token_hex(16),
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": sa_uid},
            },
        }
        token = ".".join(
            (
                _b64(json.dumps(header).encode()),
                _b64(json.dumps(claims).encode()),
                _b64(secrets.token_bytes(64)),
            )
        )
        issued = IssuedToken(token, namespace, name, sa_uid, exp)
        with self._lock:
            self._by_token[token] = issued
            self.issued.append(token)
        return issued

    def lookup(self, token: str) -> IssuedToken | None:
        with self._lock:
            return self._by_token.get(token)

    def expire(self, token: str) -> None:
        """Make a token expire now (for tests of the 401 path)."""
        with self._lock:
            t = self._by_token[token]
            self._by_token[token] = replace(t, expires_at=dt.datetime.now(dt.UTC))

    def bind(self, token: str, pod_name: str, pod_uid: str) -> None:
        """Tie an issued token to a pod (``boundObjectRef``)."""
        with self._lock:
            self._by_token[token] = replace(
                self._by_token[token], pod_name=pod_name, pod_uid=pod_uid
            )

    @staticmethod
    def bound_pod_alive(state: Any, issued: IssuedToken) -> bool:
        pod = state.store.get("pods", issued.namespace, issued.pod_name or "")
        return pod is not None and pod["metadata"].get("uid") == issued.pod_uid
