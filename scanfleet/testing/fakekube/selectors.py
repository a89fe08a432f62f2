"""Kubernetes label- and field-selector parsing and matching.

Label grammar (as k8s.io/apimachinery/pkg/labels): comma-separated requirements, each one of
``key``, ``!key``, ``key=v``, ``key==v``, ``key!=v``, ``key in (a,b)``, ``key notin (a,b)``,
``key>N``, ``key<N``. ``!=`` and ``notin`` also match objects that lack the key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Matcher = Callable[[Mapping[str, str]], bool]

_KEY = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_TOKEN_RE = re.compile(r"\s*(==|!=|=|\(|\)|,|!|>|<|[^\s=!(),<>]+)")


class SelectorError(ValueError):
    """The selector string does not parse."""


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m or not m.group(1):
            raise SelectorError(f"unable to parse requirement: {text[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _check_key(key: str) -> str:
    if not _KEY_RE.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise SelectorError(f"invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if not _VALUE_RE.match(value) or len(value) > 63:
        raise SelectorError(f"invalid label value {value!r}")
    return value


def parse_label_selector(text: str | None) -> Matcher:
    """Parse a label selector into a predicate over a labels mapping."""
    if not text or not text.strip():
        return lambda _labels: True
    toks = _tokens(text)
    reqs: list[Matcher] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(toks):
            raise SelectorError(f"unexpected end of selector {text!r}")
        i += 1
        return toks[i - 1]

    while i < len(toks):
        tok = take()
        if tok == "!":
            key = _check_key(take())
            reqs.append(_absent(key))
        else:
            key = _check_key(tok)
            nxt = toks[i] if i < len(toks) else ","
            if nxt == ",":
                reqs.append(_present(key))
            elif nxt in ("=", "=="):
                take()
                val = _check_value(_value_or_empty(toks, i))
                i += 1 if val else 0
                reqs.append(_label_in(key, {val}))
            elif nxt == "!=":
                take()
                val = _check_value(_value_or_empty(toks, i))
                i += 1 if val else 0
                reqs.append(_label_not_in(key, {val}))
            elif nxt in (">", "<"):
                op = take()
                raw = take()
                try:
                    bound = int(raw)
                except ValueError as exc:
                    raise SelectorError(f"{raw!r} is not an integer") from exc
                reqs.append(_numeric(key, op, bound))
            elif nxt in ("in", "notin"):
                op = take()
                if take() != "(":
                    raise SelectorError(f"expected '(' after {op} in {text!r}")
                values: set[str] = set()
                while True:
                    t = take()
                    if t == ")":
                        break
                    if t == ",":
                        continue
                    values.add(_check_value(t))
                if op == "in":
                    reqs.append(_label_in(key, values))
                else:
                    reqs.append(_label_not_in(key, values))
            else:
                raise SelectorError(f"unexpected {nxt!r} in selector {text!r}")
        if i < len(toks):
            if toks[i] != ",":
                raise SelectorError(f"expected ',' but found {toks[i]!r} in {text!r}")
            i += 1
            if i >= len(toks):
                raise SelectorError(f"trailing ',' in selector {text!r}")
    return lambda labels: all(r(labels) for r in reqs)


def _present(key: str) -> Matcher:
    return lambda labels: key in labels


def _absent(key: str) -> Matcher:
    return lambda labels: key not in labels


def _label_in(key: str, values: set[str]) -> Matcher:
    return lambda labels: labels.get(key) in values


def _label_not_in(key: str, values: set[str]) -> Matcher:
    return lambda labels: labels.get(key) not in values


def _field_is(
    getter: Callable[[Mapping[str, Any]], Any], value: str, equal: bool
) -> Callable[[Mapping[str, Any]], bool]:
    return lambda obj: (getter(obj) == value) is equal


def _value_or_empty(toks: list[str], i: int) -> str:
    if i >= len(toks) or toks[i] == ",":
        return ""
    if toks[i] in ("(", ")", "=", "==", "!=", "!"):
        raise SelectorError(f"unexpected {toks[i]!r} where a value was expected")
    return toks[i]


def _numeric(key: str, op: str, bound: int) -> Matcher:
    def match(labels: Mapping[str, str]) -> bool:
        try:
            value = int(labels[key])
        except (KeyError, ValueError):
            return False
        return value > bound if op == ">" else value < bound

    return match


_FIELD_PATHS = {
    "metadata.name": lambda o: o["metadata"].get("name"),
    "metadata.namespace": lambda o: o["metadata"].get("namespace"),
    "status.phase": lambda o: o.get("status", {}).get("phase"),
    "spec.nodeName": lambda o: o.get("spec", {}).get("nodeName", ""),
}


def parse_field_selector(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """Parse a field selector (``f=v``, ``f==v``, ``f!=v`` joined by commas)."""
    if not text or not text.strip():
        return lambda _obj: True
    reqs: list[Callable[[Mapping[str, Any]], bool]] = []
    for part in text.split(","):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not m:
            raise SelectorError(f"invalid field selector {part!r}")
        field, op, value = m.groups()
        getter = _FIELD_PATHS.get(field)
        if getter is None:
            raise SelectorError(f'field label not supported: "{field}"')
        if op == "!=":
            reqs.append(_field_is(getter, value, False))
        else:
            reqs.append(_field_is(getter, value, True))
    return lambda obj: all(r(obj) for r in reqs)
