"""What an upstream serves over HTTP, learnt through gRPC server reflection.

The gateway never imports another upstream's generated code: it asks the running
server for its services (``list_services``) and for the files that define
them (``file_containing_symbol``, then ``file_by_filename`` for any missing
import), rebuilds them in a private DescriptorPool, and makes one
:class:`Route` per ``google.api.http`` rule, with message classes made from
those descriptors. It also asks the upstream for the limits it publishes
(voice.api.v1.LimitsService): the values of the limits its protos name
(deadlines, longest texts), which each Rpc keeps beside its rules.

The gateway's own services are the exception: this process serves them, so
their routes come from its own descriptors (with the comments `make protos`
keeps) and its own published limits, and each Rpc keeps the servicer's
method, which the front calls in process (runtime/inprocess.py).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Mapping

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from runtime import config
from services.gateway.edge import templates
from voice.api.v1 import annotations_pb2 as voice_annotations
from voice.api.v1 import limits_pb2, limits_pb2_grpc

log = logging.getLogger("gateway.discovery")

# Served by every process; nothing to route.
INFRASTRUCTURE_SERVICES = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    limits_pb2.DESCRIPTOR.services_by_name["LimitsService"].full_name,
}
HTTP_BODY = "google.api.HttpBody"


class DiscoveryError(Exception):
    pass


@dataclass(frozen=True)
class Rpc:
    upstream: str  # service name in the mesh ("library")
    path: str  # "/voice.library.v1.LibraryService/CreateVoiceSample"
    method: descriptor.MethodDescriptor
    request_class: type
    response_class: type
    rules: voice_annotations.MethodRules  # the method's (voice.api.v1.method) option
    # The server-streaming method that answers instead when the request asks for a stream
    # (MethodRules.stream_method and stream_field); None: this one always answers.
    stream: Rpc | None = None
    # The server-streaming method that always answers instead: a download of stored bytes
    # (MethodRules.download_method, runtime/downloads.py); None: this one answers.
    download: Rpc | None = None
    # The limits its upstream published when it was reflected on, by name (see published_limits).
    limits: Mapping[str, float] = dataclasses.field(default_factory=dict, compare=False)
    # The servicer's method, when the upstream is this process (runtime/inprocess.py calls it);
    # None for another service's, called over gRPC.
    local: Callable | None = dataclasses.field(default=None, compare=False)

    def streams(self, payload: bytes) -> bool:
        """Whether the serialized request asks for the stream: its stream_field is true or not empty."""
        if self.stream is None:
            return False
        value = self.request_class.FromString(payload)
        for name in self.rules.stream_field.split("."):  # a field of the body's message: "generation.stream"
            value = getattr(value, name)
        return bool(value)

    @property
    def needs_key(self) -> bool:
        return self.rules.authentication != voice_annotations.AUTHENTICATION_NONE

    def deadline_seconds(self) -> float | None:
        """The call's deadline: the seconds of the limit its rules name, as its upstream published
        it, beyond the ordinary deadline; None for the ordinary one (also when the upstream
        publishes no such limit, which discovery warns about)."""
        seconds = self.limits.get(self.rules.deadline_limit) if self.rules.deadline_limit else None
        if seconds is None:
            return None
        return seconds + config.UPSTREAM_TIMEOUT_SECONDS.value

    @property
    def forwarded_headers(self) -> dict[str, str]:
        """Response metadata key → the HTTP header it becomes."""
        return {header.metadata: header.header for header in self.rules.response_headers}

    @property
    def passed_on_headers(self) -> dict[str, str]:
        """HTTP request header → the metadata key the method receives it as."""
        return {header.header: header.metadata for header in self.rules.request_headers}

    @property
    def server_streaming(self) -> bool:
        return self.method.server_streaming

    @property
    def client_streaming(self) -> bool:
        return self.method.client_streaming


@dataclass(frozen=True)
class Route:
    http_method: str  # "GET"
    template: templates.PathTemplate
    body: str  # "" (none), "*" (whole request) or a top-level field name
    response_body: str  # "" (whole response) or a top-level field name
    rpc: Rpc

    def __str__(self) -> str:
        return f"{self.http_method} {self.template.text}"


async def reflect(
    channel: grpc.aio.Channel, timeout: float
) -> tuple[descriptor_pool.DescriptorPool, list[str], dict[str, str]]:
    """The services the server publishes, a pool holding them with their imports,
    and the comments of their files by full name (see :func:`comments_of`)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(timeout=timeout)

    async def ask(**request) -> reflection_pb2.ServerReflectionResponse:
        await call.write(reflection_pb2.ServerReflectionRequest(**request))
        reply = await call.read()
        if reply is grpc.aio.EOF:
            raise DiscoveryError("reflection stream ended early")
        if reply.HasField("error_response"):
            raise DiscoveryError(f"reflection error: {reply.error_response.error_message}")
        return reply

    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def keep(reply: reflection_pb2.ServerReflectionResponse) -> None:
        for raw in reply.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files.setdefault(proto.name, proto)

    try:
        listing = await ask(list_services="")
        services = [s.name for s in listing.list_services_response.service]
        services = [name for name in services if name not in INFRASTRUCTURE_SERVICES]
        for name in services:
            keep(await ask(file_containing_symbol=name))
        missing = _missing_imports(files)
        while missing:
            for name in missing:
                keep(await ask(file_by_filename=name))
            still = _missing_imports(files)
            if still & missing:
                raise DiscoveryError(f"reflection does not know {sorted(still & missing)}")
            missing = still
        await call.done_writing()
    finally:
        call.cancel()

    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:  # imports first, as the pool requires
        if name in added:
            return
        added.add(name)
        for dependency in files[name].dependency:
            add(dependency)
        pool.Add(files[name])

    for name in files:
        add(name)
    comments: dict[str, str] = {}
    for proto in files.values():
        comments.update(comments_of(proto))
    return pool, services, comments


async def published_limits(channel: grpc.aio.Channel, timeout: float) -> dict[str, float]:
    """The limits the server publishes, by name; none from a server without the limits service."""
    try:
        reply = await limits_pb2_grpc.LimitsServiceStub(channel).GetLimits(
            limits_pb2.GetLimitsRequest(), timeout=timeout
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise  # not now: discovery is tried again, the last limits kept meanwhile
        return {}
    return {name: limit.value for name, limit in reply.limits.items()}


def comments_of(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, str]:
    """The leading comment of each service, method, message and field of a file, by full name
    ("voice.gateway.v1.CreateGenerationRequest.input"); empty without source info."""
    found: dict[str, str] = {}
    by_path = {
        tuple(location.path): location.leading_comments
        for location in proto.source_code_info.location
        if location.leading_comments.strip()
    }
    prefix = f"{proto.package}." if proto.package else ""

    def messages(items, path: tuple, scope: str) -> None:
        for index, item in enumerate(items):
            name, here = scope + item.name, (*path, index)
            _keep(found, name, by_path.get(here))
            for number, field in enumerate(item.field):
                _keep(found, f"{name}.{field.name}", by_path.get((*here, 2, number)))
            messages(item.nested_type, (*here, 3), name + ".")

    messages(proto.message_type, (4,), prefix)
    for index, service in enumerate(proto.service):
        name = prefix + service.name
        _keep(found, name, by_path.get((6, index)))
        for number, method in enumerate(service.method):
            _keep(found, f"{name}.{method.name}", by_path.get((6, index, 2, number)))
    return found


def _keep(found: dict[str, str], name: str, comment: str | None) -> None:
    if comment:
        # One paragraph per blank line; lines within a paragraph joined.
        paragraphs = [" ".join(line.strip() for line in block.splitlines()) for block in comment.strip().split("\n\n")]
        found[name] = "\n\n".join(paragraphs)


def commented_files(pool, services: list[str]) -> dict[str, str]:
    """The comments of the services' proto files and of every file they import, by full name, as
    `pool` (runtime.server.reflection_pool: our protos with their comments) keeps them."""
    comments: dict[str, str] = {}
    pending = [pool.FindFileByName(_file_of(name)) for name in services]
    seen: set[str] = set()
    while pending:
        file = pending.pop()
        if file.name in seen:
            continue
        seen.add(file.name)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        comments.update(comments_of(proto))
        pending += [pool.FindFileByName(name) for name in proto.dependency]
    return comments


def _file_of(service_name: str) -> str:
    return descriptor_pool.Default().FindServiceByName(service_name).file.name


def _missing_imports(files: dict[str, descriptor_pb2.FileDescriptorProto]) -> set[str]:
    return {dep for proto in files.values() for dep in proto.dependency if dep not in files}


def routes_of(
    upstream: str,
    pool: descriptor_pool.DescriptorPool,
    services: list[str],
    limits: Mapping[str, float] | None = None,
    implementations: Mapping[str, object] | None = None,
) -> list[Route]:
    """One route per google.api.http binding (additional_bindings included) of the services;
    `limits` are the ones the upstream publishes; `implementations` the servicers of services
    this process serves itself, by name (their methods are called in process)."""
    limits = dict(limits or {})
    implementations = implementations or {}
    found = []
    for service_name in services:
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue  # internal RPC: no HTTP route
            rule = options.Extensions[annotations_pb2.http]
            try:
                rpc = _rpc(upstream, service, method, limits, implementations.get(service_name))
            except ValueError as error:
                log.warning("skipping HTTP rule of %s: %s", method.full_name, error)
                continue
            for binding in [rule, *rule.additional_bindings]:
                try:
                    found.append(_route(binding, rpc))
                except (templates.TemplateError, ValueError) as error:
                    log.warning("skipping HTTP rule of %s: %s", rpc.path, error)
    return found


def _rpc(
    upstream: str,
    service: descriptor.ServiceDescriptor,
    method: descriptor.MethodDescriptor,
    limits: Mapping[str, float],
    implementation: object | None = None,
) -> Rpc:
    rules = method.GetOptions().Extensions[voice_annotations.method]
    if rules.deadline_limit and rules.deadline_limit not in limits:
        log.warning(
            "%s names the deadline limit %r, which %s does not publish: it gets the ordinary deadline",
            method.full_name, rules.deadline_limit, upstream,
        )
    stream = None
    if rules.stream_method:
        streaming = service.methods_by_name.get(rules.stream_method)
        if streaming is None or not streaming.server_streaming or streaming.client_streaming:
            raise ValueError(f"stream_method {rules.stream_method!r} is no server-streaming method of {service.full_name}")
        field_at(method.input_type, rules.stream_field)  # raises ValueError when it names no field
        stream = _rpc(upstream, service, streaming, limits, implementation)
    download = None
    if rules.download_method:
        downloading = service.methods_by_name.get(rules.download_method)
        if downloading is None or not downloading.server_streaming or downloading.client_streaming:
            raise ValueError(
                f"download_method {rules.download_method!r} is no server-streaming method of {service.full_name}"
            )
        download = _rpc(upstream, service, downloading, limits, implementation)
    return Rpc(
        upstream=upstream,
        path=f"/{service.full_name}/{method.name}",
        method=method,
        request_class=message_factory.GetMessageClass(method.input_type),
        response_class=message_factory.GetMessageClass(method.output_type),
        rules=rules,
        stream=stream,
        download=download,
        limits=limits,
        local=getattr(implementation, method.name) if implementation is not None else None,
    )


def _route(rule: http_pb2.HttpRule, rpc: Rpc) -> Route:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise ValueError("rule has no method and path")
    if pattern == "custom":
        http_method, path = rule.custom.kind.upper(), rule.custom.path
    else:
        http_method, path = pattern.upper(), getattr(rule, pattern)
    request = rpc.method.input_type
    if rule.body not in ("", "*") and rule.body not in request.fields_by_name:
        raise ValueError(f"body field {rule.body!r} is not a field of {request.full_name}")
    if rule.response_body and rule.response_body not in rpc.method.output_type.fields_by_name:
        raise ValueError(f"response_body field {rule.response_body!r} is not a field of the response")
    template = templates.parse(path)
    for variable in template.variables:
        field_at(request, variable)  # raises ValueError for a path variable naming no field
    return Route(http_method, template, rule.body, rule.response_body, rpc)


def field_at(message: descriptor.Descriptor, path: str) -> descriptor.FieldDescriptor:
    """The field a dotted path (``sample.id``) names, through singular message fields."""
    names = path.split(".")
    field = None
    for index, name in enumerate(names):
        field = message.fields_by_name.get(name)
        if field is None:
            raise ValueError(f"{message.full_name} has no field {name!r}")
        if index < len(names) - 1:
            if field.message_type is None or field.is_repeated:
                raise ValueError(f"{'.'.join(names[: index + 1])} is not a message field")
            message = field.message_type
    assert field is not None
    return field


def is_http_body(field: descriptor.FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.full_name == HTTP_BODY
