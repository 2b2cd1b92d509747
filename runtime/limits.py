"""The limits a service publishes (voice.api.v1.LimitsService, protos/voice/api/v1/limits.proto).

A limit is a named number a service holds requests to, as it is configured:
the longest text of a field ("speaker_name_chars"), the seconds a call may
take ("synth_timeout_seconds"). Each service declares its limits once, in its
ServiceSpec, each with the runtime.config Setting that holds its value.
runtime.server then serves them over gRPC beside health and reflection, and
makes them this process's limits, which runtime.fields checks requests
against (:func:`value`).

The protos name limits, never settings, so that whoever reads a field's rule
(the gateway's HTTP edge documenting it in /openapi.json) asks the service
that checks the field for its value rather than guessing from its own
environment. A service whose protos name a limit it does not publish does not
start (:func:`unpublished`).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from google.protobuf import descriptor, descriptor_pool

from runtime.config import Setting
from voice.api.v1 import annotations_pb2, limits_pb2, limits_pb2_grpc

SERVICE_NAME = limits_pb2.DESCRIPTOR.services_by_name["LimitsService"].full_name
_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")

# This process's limits: its ServiceSpec's, once runtime.server has published them.
_published: dict[str, Setting] = {}


def publish(declared: Mapping[str, Setting]) -> dict[str, Setting]:
    """Make `declared` this process's limits; returns the ones they replace (a test restores them)."""
    bad = [name for name in declared if not _NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"limit names must be snake_case: {bad}")
    previous = dict(_published)
    _published.clear()
    _published.update(declared)
    return previous


def values() -> dict[str, float]:
    """Every published limit's value now, by name."""
    return {name: float(setting.value) for name, setting in _published.items()}


def value(name: str) -> float:
    """The published limit's value now (its setting is read when asked, as settings are)."""
    setting = _published.get(name)
    if setting is None:
        raise LookupError(
            f"this service publishes no limit {name!r} (it publishes {sorted(_published) or 'none'}): "
            "add it to its ServiceSpec's limits"
        )
    return float(setting.value)


class LimitsServicer(limits_pb2_grpc.LimitsServiceServicer):
    def __init__(self, declared: Mapping[str, Setting]) -> None:
        self.declared = dict(declared)

    async def GetLimits(self, request, context):  # noqa: N802 - the generated interface
        return limits_pb2.GetLimitsResponse(
            limits={
                name: limits_pb2.Limit(value=float(setting.value), description=setting.doc)
                for name, setting in self.declared.items()
            }
        )


def named_by(service_names: Iterable[str]) -> dict[str, str]:
    """The limits the protos of these services name, each with one place that names it
    ("voice.library.v1.CreateVoiceSampleRequest.speaker_name"). Services the default
    descriptor pool does not know (a test's, served without protos) name none."""
    pool = descriptor_pool.Default()
    named: dict[str, str] = {}
    seen: set[str] = set()

    def fields_of(message: descriptor.Descriptor) -> None:
        if message.full_name in seen:
            return
        seen.add(message.full_name)
        for field in message.fields:
            options = field.GetOptions()
            if options.HasExtension(annotations_pb2.field):
                rules = options.Extensions[annotations_pb2.field]
                for limit in (rules.max_length_limit, rules.maximum_limit):
                    if limit:
                        named.setdefault(limit, field.full_name)
            if field.message_type is not None:
                fields_of(field.message_type)

    for service_name in service_names:
        try:
            service = pool.FindServiceByName(service_name)
        except KeyError:
            continue
        for method in service.methods:
            limit = method.GetOptions().Extensions[annotations_pb2.method].deadline_limit
            if limit:
                named.setdefault(limit, method.full_name)
            fields_of(method.input_type)
    return named


def unpublished(service_names: Iterable[str], declared: Mapping[str, Setting]) -> dict[str, str]:
    """The limits these services' protos name that `declared` lacks, with where each is named."""
    return {name: where for name, where in named_by(service_names).items() if name not in declared}
