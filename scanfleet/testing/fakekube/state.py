"""Everything one fake cluster knows: objects, tokens, admin rules, records and faults."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .rbac import Attributes, Identity, Rule, rules_allow
from .store import MANAGED_BY, Obj, Store
from .tokens import TokenIssuer

ADMIN_USER = "fake-admin"
# What every authenticated user gets from the system:basic-user ClusterRole.
BASIC_USER_RULES: list[Rule] = [
    {
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        "verbs": ["create"],
    },
]

ExecHandler = Callable[[str, str, str, list[str]], tuple[bytes, int]]


class RecordedRequest(NamedTuple):
    method: str
    path: str  # without the query string
    identity: str  # username, or "" when unauthenticated


class LoggedRequest(NamedTuple):
    """One request as the API server saw it: the request log (``FakeCluster.request_log``).

    ``verb``/``group``/``resource``/... are the authorizer's view (``verb`` is "" for paths
    that name no resource, such as discovery); ``code`` is the status sent (101 for an exec
    upgrade; None when the connection was dropped or nothing was sent); ``body`` is the
    decoded JSON body of writes (POST, PUT, PATCH, DELETE), None otherwise; ``query`` the
    query parameters (last value of each); ``old_object`` the stored object a PUT, PATCH or
    DELETE found (what admission sees as ``oldObject``); ``user_agent`` the client's
    User-Agent (kubectl's tells the auditor's requests from scanfleet's). No token is ever recorded:
    ``identity`` and ``groups`` are the user the credential resolved to.
    """

    method: str
    path: str
    identity: str
    verb: str = ""
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    groups: tuple[str, ...] = ()
    code: int | None = None
    body: Any = None
    query: tuple[tuple[str, str], ...] = ()
    old_object: Any = None
    user_agent: str = ""

    @property
    def short(self) -> str:
        """``create serviceaccounts/token apps/scanfleet-x``: a compact form for messages."""
        res = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        name = self.name
        if not name and isinstance(self.body, dict):  # a create names its object in the body
            name = str((self.body.get("metadata") or {}).get("name") or "")
        where = f"{self.namespace}/{name}" if self.namespace else name
        return f"{self.verb or self.method} {res or self.path} {where}".rstrip()


@dataclass(frozen=True)
class ExecAttempt:
    identity: str
    namespace: str
    pod: str
    container: str | None
    command: tuple[str, ...]
    allowed: bool


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int | None  # None: drop the connection
    remaining: int
    retry_after: int | None = None
    message: str | None = None


class State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.store = Store()
        self.tokens = TokenIssuer()
        self.admin_rules: list[Rule] | None = None
        self.requests: list[RecordedRequest] = []
        self.log: list[LoggedRequest] = []
        self.exec_attempts: list[ExecAttempt] = []
        self.errors: list[str] = []
        self.faults: list[Fault] = []
        self.exec_handler: ExecHandler | None = None
        # requested expirationSeconds -> granted seconds (None: granted as requested)
        self.token_lifetime: Callable[[int], int] | None = None
        self.gc_paused = False
        self.collected: list[tuple[str, str, str, str]] = []  # (resource, ns, name, uid)
        self.live_scanfleet_sas = 0
        self.peak_scanfleet_sas = 0
        self.latency = 0.0  # seconds added before every response (FakeCluster.set_latency)
        self.store.listen(self._on_change)

    def _on_change(self, event: str, resource: str, obj: Obj) -> None:
        if resource != "serviceaccounts":
            return
        if (obj["metadata"].get("labels") or {}).get(MANAGED_BY) != "scanfleet":
            return
        self.live_scanfleet_sas += 1 if event == "ADDED" else -1
        self.peak_scanfleet_sas = max(self.peak_scanfleet_sas, self.live_scanfleet_sas)

    # --- identities -----------------------------------------------------------------
    def admin_identity(self) -> Identity:
        return Identity(
            ADMIN_USER,
            ("system:masters", "system:authenticated"),
            superuser=self.admin_rules is None,
        )

    def is_superuser(self, identity: Identity) -> bool:
        return identity.username == ADMIN_USER and self.admin_rules is None

    def rules_for(self, identity: Identity, namespace: str | None) -> list[Rule]:
        """The RBAC rules that apply to ``identity`` in ``namespace`` (None: cluster scope)."""
        rules = list(BASIC_USER_RULES)
        if identity.username == ADMIN_USER:
            return rules + list(
                self.admin_rules or [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
            )
        if identity.sa_name is None or namespace is None:
            return rules
        with self.store.lock:
            for rb in self.store.list("rolebindings", namespace):
                if not any(_subject_is(s, identity, namespace) for s in rb.get("subjects") or []):
                    continue
                ref = rb.get("roleRef") or {}
                if ref.get("kind") != "Role":
                    continue
                role = self.store.get("roles", namespace, ref.get("name", ""))
                if role is not None:
                    rules.extend(role.get("rules") or [])
        return rules

    def allowed(self, identity: Identity, attrs: Attributes) -> bool:
        if self.is_superuser(identity):
            return True
        return rules_allow(self.rules_for(identity, attrs.namespace), attrs)

    # --- faults -----------------------------------------------------------------------
    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.remaining > 0 and f.method in ("*", method) and f.pattern.search(path):
                    f.remaining -= 1
                    return f
        return None

    def record(self, method: str, path: str, identity: Identity | None, **fields: Any) -> int:
        """Append a request to the log; returns its index for ``finish``."""
        user = identity.username if identity else ""
        with self.lock:
            self.requests.append(RecordedRequest(method, path, user))
            self.log.append(
                LoggedRequest(
                    method, path, user, groups=identity.groups if identity else (), **fields
                )
            )
            return len(self.log) - 1

    def finish(self, index: int, code: int) -> None:
        """Record the status code sent for the request at ``index`` of the log."""
        with self.lock:
            if index < len(self.log):
                self.log[index] = self.log[index]._replace(code=code)


def _subject_is(subject: dict[str, Any], identity: Identity, binding_ns: str) -> bool:
    kind = subject.get("kind")
    if kind == "ServiceAccount":
        return (
            subject.get("name") == identity.sa_name
            and (subject.get("namespace") or binding_ns) == identity.sa_namespace
        )
    if kind == "User":
        return subject.get("name") == identity.username
    if kind == "Group":
        return subject.get("name") in identity.groups
    return False


def copy_rules(rules: Sequence[Rule]) -> list[Rule]:
    return [dict(r) for r in rules]
