"""Just enough protobuf to read what kubectl sends as ``application/vnd.kubernetes.protobuf``.

A body is ``k8s\\x00`` + runtime.Unknown {1: typeMeta{1: apiVersion, 2: kind}, 2: raw,
3: contentEncoding, 4: contentType}; ``raw`` is the object's own message. Only the two
request kinds a client may send us are mapped to JSON-shaped dicts (TokenRequest,
SelfSubjectAccessReview, ServiceAccount, Role, RoleBinding); answers are always JSON.
"""

from __future__ import annotations

from typing import Any

MAGIC = b"k8s\x00"

Fields = dict[int, list[Any]]


class ProtobufError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes) -> Fields:
    """Decode one message level: field number -> list of raw values (int or bytes)."""
    out: Fields = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ProtobufError("truncated message")
        out.setdefault(num, []).append(value)
    return out


def _str(f: Fields, num: int) -> str | None:
    v = f.get(num)
    return v[-1].decode() if v else None


def _msg(f: Fields, num: int) -> Fields:
    v = f.get(num)
    return fields(v[-1]) if v else {}


def _strs(f: Fields, num: int) -> list[str]:
    return [v.decode() for v in f.get(num, [])]


def _string_map(f: Fields, num: int) -> dict[str, str]:
    out = {}
    for entry in f.get(num, []):
        e = fields(entry)
        out[_str(e, 1) or ""] = _str(e, 2) or ""
    return out


def _object_meta(f: Fields) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for num, key in ((1, "name"), (2, "generateName"), (3, "namespace")):
        if s := _str(f, num):
            meta[key] = s
    for num, key in ((11, "labels"), (12, "annotations")):
        if num in f:
            meta[key] = _string_map(f, num)
    return meta


def _service_account(raw: Fields) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _object_meta(_msg(raw, 1)),
    }
    if 4 in raw:
        out["automountServiceAccountToken"] = bool(raw[4][-1])
    return out


def _role(raw: Fields) -> dict[str, Any]:
    rules = []
    for r in raw.get(2, []):
        rf = fields(r)
        rule: dict[str, Any] = {}
        for num, key in (
            (1, "verbs"),
            (2, "apiGroups"),
            (3, "resources"),
            (4, "resourceNames"),
            (5, "nonResourceURLs"),
        ):
            if num in rf:
                rule[key] = _strs(rf, num)
        rules.append(rule)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _object_meta(_msg(raw, 1)),
        "rules": rules,
    }


def _role_binding(raw: Fields) -> dict[str, Any]:
    subjects = []
    for s in raw.get(2, []):
        sf = fields(s)
        subj = {
            k: _str(sf, n) for n, k in ((1, "kind"), (2, "apiGroup"), (3, "name"), (4, "namespace"))
        }
        subjects.append({k: v for k, v in subj.items() if v})
    ref = _msg(raw, 3)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _object_meta(_msg(raw, 1)),
        "subjects": subjects,
        "roleRef": {
            "apiGroup": _str(ref, 1) or "",
            "kind": _str(ref, 2) or "",
            "name": _str(ref, 3) or "",
        },
    }


def _token_request(raw: Fields) -> dict[str, Any]:
    spec = _msg(raw, 2)
    out: dict[str, Any] = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": _object_meta(_msg(raw, 1)),
        "spec": {"audiences": [a.decode() for a in spec.get(1, [])]},
    }
    if 4 in spec:
        out["spec"]["expirationSeconds"] = spec[4][-1]
    if 3 in spec:
        ref = _msg(spec, 3)
        out["spec"]["boundObjectRef"] = {
            k: _str(ref, n) for n, k in ((1, "kind"), (2, "apiVersion"), (3, "name"), (4, "uid"))
        }
    return out


def _ssar(raw: Fields) -> dict[str, Any]:
    spec = _msg(raw, 2)
    out_spec: dict[str, Any] = {}
    if 1 in spec:
        ra = _msg(spec, 1)
        names = ("namespace", "verb", "group", "version", "resource", "subresource", "name")
        out_spec["resourceAttributes"] = {k: _str(ra, i + 1) or "" for i, k in enumerate(names)}
    if 2 in spec:
        nra = _msg(spec, 2)
        out_spec["nonResourceAttributes"] = {"path": _str(nra, 1) or "", "verb": _str(nra, 2) or ""}
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "metadata": _object_meta(_msg(raw, 1)),
        "spec": out_spec,
    }


def decode(body: bytes) -> dict[str, Any]:
    """Decode a Kubernetes protobuf request body into a JSON-shaped dict."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing k8s protobuf magic")
    unknown = fields(body[len(MAGIC) :])
    type_meta = _msg(unknown, 1)
    kind = _str(type_meta, 2) or ""
    raw = fields(unknown[2][-1]) if 2 in unknown else {}
    if kind == "TokenRequest":
        return _token_request(raw)
    if kind == "SelfSubjectAccessReview":
        return _ssar(raw)
    if kind == "ServiceAccount":
        return _service_account(raw)
    if kind == "Role":
        return _role(raw)
    if kind == "RoleBinding":
        return _role_binding(raw)
    raise ProtobufError(f"protobuf bodies of kind {kind!r} are not supported by the fake")
