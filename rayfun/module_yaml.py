"""StateFun's ``module.yaml``: endpoints, ingresses and egresses declared as ``kind`` + ``spec`` documents.

``load_module`` reads a multi-document YAML file (or its text) into a ``ModuleSpec``. Each document's
``kind`` picks a builder from the one registry in ``rayfun.module_kinds``: the HTTP endpoint kinds (built
here) and the Kafka kinds are built in, and third parties register theirs with ``register_kind`` or the
``rayfun.module_kinds`` entry-point group. A kind nobody registered is an error that names the kind, the
document and every known kind, never a silently ignored document.

HTTP endpoints take StateFun's keys (``functions``, ``urlPathTemplate``, ``maxNumBatchRequests``,
``transport``) plus rayfun's optional ``maxRetries``, ``onFailure`` (``restart`` | ``dead-letter``) and
``maxConcurrentRequests``. Durations are Flink strings (``2 min``, ``20s``); a bare number is milliseconds,
as in Flink. The legacy StateFun 3.0 format (``version: "3.0"``, one ``module:`` document) is read too, as
StateFun 3.1+ reads it; versions 1.0 and 2.0 are refused, naming the versions rayfun reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import RayfunError
from .module_kinds import KindError, lookup, register_kind, registered_kinds
from .remote.endpoint import HttpEndpoint, parse_duration

__all__ = ["ModuleSpec", "ModuleSpecError", "load_module", "register_kind", "registered_kinds"]


class ModuleSpecError(RayfunError, ValueError):
    """A module.yaml that cannot be used; the message names the document and what is wrong."""


@dataclass
class ModuleSpec:
    """What a module.yaml declares, built: ``HttpEndpoint``s, ingress and egress components."""

    endpoints: list[HttpEndpoint] = field(default_factory=list)
    ingresses: list[Any] = field(default_factory=list)
    egresses: list[Any] = field(default_factory=list)


def load_module(path_or_text: str | os.PathLike) -> ModuleSpec:
    """Build every component a module.yaml declares (a file path, ``file://`` URL, or the YAML text)."""
    text, source = _read(path_or_text)
    try:
        documents = [d for d in yaml.safe_load_all(text)]
    except yaml.YAMLError as exc:
        raise ModuleSpecError(f"{source} is not valid YAML: {exc}") from None
    present = [(i, d) for i, d in enumerate(documents, 1) if d is not None]
    if not present:
        raise ModuleSpecError(f"{source} declares nothing (no YAML documents)")
    total = len(documents)
    module = ModuleSpec()
    for index, doc in present:
        where = f"{source}, document {index} of {total}"
        if not isinstance(doc, dict):
            raise ModuleSpecError(f"{where}: expected a mapping with 'kind' and 'spec', got {type(doc).__name__}")
        if "kind" not in doc and ("version" in doc or "module" in doc):
            for legacy_kind, legacy_spec, place in _legacy_components(doc, where):
                _add(module, legacy_kind, legacy_spec, place)
            continue
        kind = doc.get("kind")
        if not isinstance(kind, str) or not kind:
            raise ModuleSpecError(f"{where}: missing 'kind' (e.g. io.statefun.endpoints.v2/http)")
        extra = sorted(set(doc) - {"kind", "spec"})
        if extra:
            raise ModuleSpecError(
                f"{where} (kind {kind}): unexpected top-level keys {extra}; put settings under 'spec'"
            )
        _add(module, kind, doc.get("spec"), f"{where} (kind {kind})")
    _check_unique(module, source)
    return module


def _add(module: ModuleSpec, kind: str, spec: Any, where: str) -> None:
    """Build one component of ``kind`` from ``spec`` into its section of ``module``."""
    if not isinstance(spec, dict):
        raise ModuleSpecError(f"{where}: 'spec' must be a mapping, got {type(spec).__name__}")
    try:
        builder, section = lookup(kind)
    except KindError as exc:
        raise ModuleSpecError(f"{where}: {exc}") from exc
    try:
        component = builder(spec)
    except ModuleSpecError as exc:
        raise ModuleSpecError(f"{where}: {exc}") from None
    except (ValueError, TypeError, KeyError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ModuleSpecError(f"{where}: {detail}") from exc
    getattr(module, section).append(component)


# ---------------------------------------------------------------------------------------------------------
# The legacy StateFun 3.0 format: one document, ``version: "3.0"`` and ``module: {meta: {type: remote}, spec:
# {endpoints, ingresses, egresses}}``, each component ``{endpoint|ingress|egress: {meta, spec}}``. StateFun
# 3.1+ still reads it by turning each component into a kind + spec document, and so does rayfun: the same
# builders then check the specs.

#: the versions of the ``version:`` format rayfun reads
LEGACY_VERSIONS = ("3.0",)
#: 3.0 component types -> the kind StateFun 3.1+ builds them with (others are taken as kinds themselves)
_LEGACY_KINDS = {
    "http": "io.statefun.endpoints.v1/http",
    "io.statefun.kafka/ingress": "io.statefun.kafka.v1/ingress",
    "io.statefun.kafka/egress": "io.statefun.kafka.v1/egress",
    "io.statefun.kinesis/ingress": "io.statefun.kinesis.v1/ingress",
    "io.statefun.kinesis/egress": "io.statefun.kinesis.v1/egress",
}
_LEGACY_SECTIONS = (("endpoints", "endpoint", "kind"), ("ingresses", "ingress", "type"), ("egresses", "egress", "type"))


def _legacy_components(doc: Mapping[str, Any], where: str) -> list[tuple[str, Any, str]]:
    """(kind, spec, where) of each component of a 3.0-format document, the id moved into the spec."""
    version = doc.get("version")
    version_text = str(version) if isinstance(version, (str, int, float)) and not isinstance(version, bool) else None
    if version_text not in LEGACY_VERSIONS:
        raise ModuleSpecError(
            f"{where}: module.yaml version {version!r} is not supported; rayfun reads version "
            f"{' or '.join(repr(v) for v in LEGACY_VERSIONS)} (StateFun 3.0) and the StateFun 3.1+ format of one "
            f"'kind:' + 'spec:' document per component (versions 1.0 and 2.0 predate the remote module)"
        )
    extra = sorted(set(doc) - {"version", "module"})
    if extra:
        raise ModuleSpecError(f"{where}: unexpected top-level keys {extra} in a version 3.0 module")
    body = doc.get("module")
    if not isinstance(body, dict):
        raise ModuleSpecError(f"{where}: a version 3.0 module needs 'module: {{meta: {{type: remote}}, spec: ...}}'")
    meta = body.get("meta") or {}
    module_type = meta.get("type") if isinstance(meta, dict) else None
    if module_type != "remote":
        raise ModuleSpecError(
            f"{where}: module.meta.type is {module_type!r}; rayfun reads only remote modules (type: remote)"
        )
    spec = body.get("spec") or {}
    if not isinstance(spec, dict):
        raise ModuleSpecError(f"{where}: module.spec must be a mapping of endpoints, ingresses and egresses")
    _check_keys(spec, {section for section, _, _ in _LEGACY_SECTIONS}, "module.spec")
    out: list[tuple[str, Any, str]] = []
    for section, item_key, kind_key in _LEGACY_SECTIONS:
        items = spec.get(section)
        if items is None:
            items = []
        if not isinstance(items, list):
            raise ModuleSpecError(f"{where}: module.spec.{section} must be a list")
        for n, item in enumerate(items, 1):
            place = f"{where}, module.spec.{section}[{n}]"
            component = item.get(item_key) if isinstance(item, dict) and len(item) == 1 else None
            if not isinstance(component, dict):
                raise ModuleSpecError(f"{place}: expected '- {item_key}: {{meta: ..., spec: ...}}'")
            meta = component.get("meta")
            if not isinstance(meta, dict):
                raise ModuleSpecError(f"{place}: missing {item_key}.meta")
            legacy_kind = meta.get(kind_key)
            if not isinstance(legacy_kind, str) or not legacy_kind:
                raise ModuleSpecError(f"{place}: missing {item_key}.meta.{kind_key}")
            if section == "endpoints" and legacy_kind != "http":
                raise ModuleSpecError(f"{place}: endpoint kind {legacy_kind!r}: only http endpoints are supported")
            kind = _LEGACY_KINDS.get(legacy_kind, legacy_kind)
            comp_spec = component.get("spec")
            if section != "endpoints":  # the id sits in meta in 3.0, in the spec since 3.1
                if not isinstance(comp_spec, dict):
                    raise ModuleSpecError(f"{place} ({legacy_kind}): 'spec' must be a mapping")
                if "id" not in meta:
                    raise ModuleSpecError(f"{place} ({legacy_kind}): missing {item_key}.meta.id")
                comp_spec = {**comp_spec, "id": meta["id"]}
            out.append((kind, comp_spec, f"{place} ({legacy_kind}, read as kind {kind})"))
    if not out:
        raise ModuleSpecError(f"{where}: the version 3.0 module declares no endpoints, ingresses or egresses")
    return out


def _read(path_or_text: str | os.PathLike) -> tuple[str, str]:
    if isinstance(path_or_text, os.PathLike):
        path = os.fspath(path_or_text)
    elif isinstance(path_or_text, str):
        path = path_or_text[len("file://") :] if path_or_text.startswith("file://") else path_or_text
        if not os.path.isfile(path):
            if "\n" in path_or_text or ":" in path_or_text:
                return path_or_text, "module.yaml text"
            raise ModuleSpecError(f"module file {path_or_text!r} not found")
    else:
        raise TypeError(f"load_module() takes a path or YAML text, got {type(path_or_text).__name__}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except OSError as exc:
        raise ModuleSpecError(f"cannot read module file {path!r}: {exc}") from None


def _check_unique(module: ModuleSpec, source: str) -> None:
    seen: set[str] = set()
    for endpoint in module.endpoints:
        if endpoint.functions in seen:
            raise ModuleSpecError(f"{source}: two endpoints serve {endpoint.functions!r}")
        seen.add(endpoint.functions)
    for section in ("ingresses", "egresses"):
        ids: set[str] = set()
        for component in getattr(module, section):
            cid = getattr(component, "id", None)
            if isinstance(cid, str):
                if cid in ids:
                    raise ModuleSpecError(f"{source}: two {section} have the id {cid!r}")
                ids.add(cid)


# ---------------------------------------------------------------------------------------------------------
# HTTP endpoints.

_ASYNC = "io.statefun.transports.v1/async"
_OKHTTP = "io.statefun.transports.v1/okhttp"
_RAYFUN_KEYS = {
    "maxRetries": "max_retries",
    "onFailure": "on_failure",
    "maxConcurrentRequests": "max_concurrent_requests",
}


def _check_keys(mapping: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ModuleSpecError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {unknown} in {what}; allowed: {sorted(allowed)}"
        )


def _duration(value: Any, what: str) -> float:
    """A module.yaml duration: a Flink string, or a bare number of milliseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = f"{value}ms"
    seconds = parse_duration(value, what)
    if seconds <= 0:
        raise ModuleSpecError(f"{what} must be positive, got {value!r}")
    return seconds


def _file_path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ModuleSpecError(f"{what} must be a file path, got {value!r}")
    if value.startswith("classpath:"):
        raise ModuleSpecError(f"{what}: classpath: resources are a JVM notion; give a file path")
    for prefix in ("file://", "file:"):
        if value.startswith(prefix):
            return value[len(prefix) :]
    return value


def _okhttp_timeouts(timeouts: Any, what: str) -> dict[str, Any]:
    if timeouts is None:
        timeouts = {}
    if not isinstance(timeouts, dict):
        raise ModuleSpecError(f"{what} must be a mapping of call/connect/read/write")
    _check_keys(timeouts, {"call", "connect", "read", "write"}, what)
    call = _duration(timeouts.get("call", "1 min"), f"{what}.call")
    out: dict[str, Any] = {"call_timeout": call}
    for key, default in (("connect", "10 s"), ("read", "10 s"), ("write", "10 s")):
        seconds = _duration(timeouts.get(key, default), f"{what}.{key}")
        if seconds > call:
            raise ModuleSpecError(f"{what}.{key} ({seconds:g}s) must not exceed {what}.call ({call:g}s)")
        if key != "write":  # aiohttp has no separate write timeout: the attempt budget covers it
            out[f"{key}_timeout"] = seconds
    return out


def _async_transport(transport: Mapping[str, Any], what: str) -> dict[str, Any]:
    keys = {
        "type",
        "call",
        "connect",
        "read",
        "timeouts",
        "pool_ttl",
        "pool_size",
        "payload_max_bytes",
        "trust_cacerts",
        "client_cert",
        "client_key",
        "client_key_password",
        "verify",
    }
    _check_keys(transport, keys, what)
    timeouts = transport.get("timeouts") or {}
    if not isinstance(timeouts, dict):
        raise ModuleSpecError(f"{what}.timeouts must be a mapping of call/connect/read")
    _check_keys(timeouts, {"call", "connect", "read"}, f"{what}.timeouts")
    out: dict[str, Any] = {}
    for key, default in (("call", "2 min"), ("connect", "20 s"), ("read", None)):
        value = timeouts.get(key, transport.get(key, default))  # nested timeouts win, as in StateFun
        if value is not None:
            out[f"{key}_timeout"] = _duration(value, f"{what}.{key}")
    if "pool_ttl" in transport:
        out["pool_ttl"] = _duration(transport["pool_ttl"], f"{what}.pool_ttl")
    for key in ("pool_size", "payload_max_bytes"):
        if key in transport:
            out[key] = transport[key]
    if "trust_cacerts" in transport:
        out["ca_file"] = _file_path(transport["trust_cacerts"], f"{what}.trust_cacerts")
    for key in ("client_cert", "client_key"):
        if key in transport:
            out[key] = _file_path(transport[key], f"{what}.{key}")
    if "client_key_password" in transport:
        out["client_key_password"] = str(transport["client_key_password"])
    if "verify" in transport:
        out["verify"] = transport["verify"]
    return out


def _endpoint_common(spec: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("functions", "urlPathTemplate"):
        if key not in spec:
            raise ModuleSpecError(f"missing required key {key!r}")
        if not isinstance(spec[key], str):
            raise ModuleSpecError(f"{key!r} must be a string, got {spec[key]!r}")
    out: dict[str, Any] = {"functions": spec["functions"], "url_path_template": spec["urlPathTemplate"]}
    if "maxNumBatchRequests" in spec:
        out["max_num_batch_requests"] = spec["maxNumBatchRequests"]
    for key, field_name in _RAYFUN_KEYS.items():
        if key in spec:
            out[field_name] = spec[key]
    return out


def build_http_endpoint_v2(spec: Mapping[str, Any]) -> HttpEndpoint:
    """``io.statefun.endpoints.v2/http``: the async transport by default, or okhttp."""
    _check_keys(spec, {"functions", "urlPathTemplate", "maxNumBatchRequests", "transport", *_RAYFUN_KEYS}, "spec")
    kwargs = _endpoint_common(spec)
    transport = spec.get("transport") or {}
    if not isinstance(transport, dict):
        raise ModuleSpecError(f"'transport' must be a mapping, got {transport!r}")
    kind = transport.get("type", _ASYNC)
    if kind == _ASYNC:
        kwargs.update(_async_transport(transport, "transport"))
    elif kind == _OKHTTP:
        _check_keys(transport, {"type", "timeouts"}, "transport")
        kwargs.update(_okhttp_timeouts(transport.get("timeouts"), "transport.timeouts"))
    else:
        raise ModuleSpecError(f"unknown transport type {kind!r}; use {_ASYNC} or {_OKHTTP}")
    return HttpEndpoint(**kwargs)


def build_http_endpoint_v1(spec: Mapping[str, Any]) -> HttpEndpoint:
    """``io.statefun.endpoints.v1/http``: okhttp-style ``timeouts`` directly under spec."""
    _check_keys(spec, {"functions", "urlPathTemplate", "maxNumBatchRequests", "timeouts", *_RAYFUN_KEYS}, "spec")
    kwargs = _endpoint_common(spec)
    kwargs.update(_okhttp_timeouts(spec.get("timeouts"), "timeouts"))
    return HttpEndpoint(**kwargs)
