"""The OpenAPI 3.0 document of the HTTP API, made from the same routes and descriptors the front serves.

Everything in it comes from the protos, read over reflection: paths from the
``google.api.http`` rules; which operations need a key, their response
headers and audio media types from the ``(voice.api.v1.method)`` option (a
``text/event-stream`` answer is documented by the schema of one of its events);
required fields, bounds, defaults, allowed values and lengths from the
``(voice.api.v1.field)`` rules the services check requests against, a length
that a rule names as a limit with the value the route's upstream publishes
(the service that checks the field, as it is configured); and the
descriptions from the protos' comments.
"""

from __future__ import annotations

from typing import Mapping

from google.protobuf import descriptor

from runtime import fields
from services.gateway.edge.discovery import Route, field_at, is_http_body
from services.gateway.edge.errors import RETRY_STATUSES

FieldType = descriptor.FieldDescriptor

_SCALARS = {
    FieldType.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldType.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldType.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldType.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldType.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldType.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldType.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    # 64-bit integers are JSON numbers while they fit a double exactly, strings beyond.
    FieldType.TYPE_INT64: {"type": "integer", "format": "int64"},
    FieldType.TYPE_SINT64: {"type": "integer", "format": "int64"},
    FieldType.TYPE_SFIXED64: {"type": "integer", "format": "int64"},
    FieldType.TYPE_UINT64: {"type": "integer", "format": "int64", "minimum": 0},
    FieldType.TYPE_FIXED64: {"type": "integer", "format": "int64", "minimum": 0},
    FieldType.TYPE_BOOL: {"type": "boolean"},
    FieldType.TYPE_STRING: {"type": "string"},
    FieldType.TYPE_BYTES: {"type": "string", "format": "byte"},
}
BINARY = {"type": "string", "format": "binary"}
EVENT_STREAM = "text/event-stream"
# A text/event-stream answer's schema is that of one event, as a client (a browser's EventSource,
# an OpenAPI tool) reads the stream: OpenAPI 3.0 has no schema for the stream as a whole (3.2's
# itemSchema), and tools such as schemathesis check every event against it.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "description": "The event's type (a client reads `message` when it has none)."},
        "data": {"type": "string", "description": "The event's data, as text (its lines joined by newlines)."},
        "id": {"type": "string", "description": "The event's id, which a client reconnecting sends as Last-Event-ID."},
        "retry": {"type": "integer", "minimum": 0, "description": "Milliseconds a client waits before reconnecting."},
    },
}
# Well-known types with a JSON form of their own.
_WELL_KNOWN = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "example": "1.5s"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {"type": "object"},
    "google.api.HttpBody": BINARY,
}
ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error has this shape; `type` says what went wrong (see the README's table of types).",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string", "example": "invalid_parameter", "description": "The error type."},
                "message": {"type": "string", "description": "What went wrong, for people."},
                "param": {"type": "string", "nullable": True, "description": "The request field at fault, if one is."},
            },
        },
        "title": {"type": "string", "description": "Problem details (RFC 9457): the error type, in words."},
        "detail": {"type": "string", "description": "Problem details: the message."},
        "status": {"type": "integer", "description": "Problem details: the HTTP status."},
    },
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}
# The statuses any API route may answer with, and when.
ERROR_STATUSES = {
    "400": "The request is invalid (`invalid_parameter` names the field).",
    "401": "No API key, or an unknown, revoked or expired one (`unauthorized`).",
    "403": "The key lacks the scope this operation needs (`insufficient_scope`, naming it), or its account is "
    "disabled (`account_disabled`).",
    "404": "No such resource for this account (`not_found`), or no provider for the model (`no_provider`).",
    "408": "The request's headers or body came too slowly (`request_timeout`); the connection is closed.",
    "413": "The body or a field is larger than its limit (`request_too_large`).",
    "415": "The body is not of a media type this route takes (`unsupported_media_type`).",
    "429": "Over a limit (`rate_limited`) or a bounded queue is full (`synth_busy`, `uploads_busy`, ...); "
    "try again after Retry-After.",
    "500": "An internal error; its message carries the request id.",
    "502": "A provider behind the API failed (`upstream_error`).",
    "503": "A service or the database is unavailable; nothing was changed; try again after Retry-After.",
}
REQUEST_ID_HEADER = {
    "X-Request-Id": {"description": "The id of this request in the gateway's logs.", "schema": {"type": "string"}}
}
# A GET with a binary answer (and HEAD, on every GET route) takes one byte range (ranges.py).
RANGE_PARAMETER = {
    "name": "Range",
    "in": "header",
    "description": "One byte range of the answer, `bytes=0-99`, `bytes=100-` or `bytes=-100`: answered 206 with "
    "those bytes alone. Several ranges, or a Range with If-Range, are answered 200 whole.",
    "schema": {"type": "string"},
}
ACCEPT_RANGES_HEADER = {
    "Accept-Ranges": {"description": "Byte ranges of this answer may be asked for.", "schema": {"type": "string", "enum": ["bytes"]}}
}
CONTENT_RANGE_HEADER = {
    "Content-Range": {
        "description": "`bytes first-last/size` of a 206; `bytes */size` of a 416.",
        "required": True,
        "schema": {"type": "string"},
    }
}
# A download (a route with a download_method, runtime/downloads.py) may send its client to the store.
REDIRECT = {
    "description": "The bytes are served by the object store (or a CDN before it), where the gateway is set to hand "
    "them out so: fetch Location, a presigned URL that works without a key for a short while (byte ranges "
    "included).",
    "headers": {
        "Location": {"description": "Where the bytes are.", "required": True, "schema": {"type": "string"}},
        **REQUEST_ID_HEADER,
    },
}
GONE = "What was stored here was deleted under a retention setting (`audio_expired`); the record stays."
# Sent with the statuses that mean "not now" (errors.RETRY_STATUSES).
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Whole seconds to wait before trying again, estimated from the queue and its throughput.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


class _Builder:
    def __init__(self, comments: Mapping[str, str]) -> None:
        self.comments = comments
        self.schemas: dict[str, dict] = {"Error": ERROR_SCHEMA}
        # The limits of the upstream whose route is being described. A message's schema is
        # made once, for the first route that uses it: each upstream serves messages of its own.
        self.limits: Mapping[str, float] = {}

    def message(self, message: descriptor.Descriptor, leave_out: set[str] = frozenset()) -> dict:
        """A reference to the message's schema (inline when some fields are left out)."""
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        wrapped = _wrapped_scalar(message)
        if wrapped is not None:
            return {**wrapped, "nullable": True}
        if leave_out:
            return self._object(message, leave_out)
        if message.full_name not in self.schemas:
            self.schemas[message.full_name] = {}  # placeholder: messages may refer to themselves
            self.schemas[message.full_name] = self._object(message, set())
        return {"$ref": f"#/components/schemas/{message.full_name}"}

    def _object(self, message: descriptor.Descriptor, leave_out: set[str]) -> dict:
        kept = [field for field in message.fields if field.name not in leave_out]
        schema: dict = {"type": "object"}
        if message.full_name in self.comments:
            schema["description"] = self.comments[message.full_name]
        required = [field.name for field in kept if _is_required(field)]
        if required:
            schema["required"] = required
        schema["properties"] = {field.name: self.described(field) for field in kept}
        return schema

    def described(self, field: descriptor.FieldDescriptor) -> dict:
        """The field's schema with its rules and its comment."""
        schema = self.field(field)
        if "$ref" in schema:
            return schema  # OpenAPI 3.0 ignores whatever stands beside a reference
        declared = fields.rules(field)
        notes = []
        if declared is not None:
            # A list's rules hold for each of its items.
            each = schema["items"] if schema.get("type") == "array" and "items" in schema else schema
            if declared.name:
                each["pattern"] = fields.name_pattern()
                notes.append(NAME_NOTE)
            if declared.HasField("minimum"):
                each["minimum"] = _number(declared.minimum)
            most = _maximum(declared, self.limits)
            if most is not None:
                each["maximum"] = _number(most)
            elif declared.maximum_limit:  # its upstream did not publish it
                notes.append(f"At most as much as the service's limit {declared.maximum_limit} allows.")
            if declared.one_of:
                each["enum"] = list(declared.one_of)
            if declared.default:
                schema["default"] = fields.default(field)
            length = _max_length(declared, self.limits)
            if length is not None:
                each["maxLength"] = length
            elif declared.max_length_limit:  # its upstream did not publish it
                notes.append(f"At most as many characters as the service's limit {declared.max_length_limit} allows.")
        comment = self.comments.get(field.full_name)
        if comment or notes:
            schema["description"] = " ".join([comment, *notes] if comment else notes)
        return schema

    def field(self, field: descriptor.FieldDescriptor) -> dict:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)

    def single(self, field: descriptor.FieldDescriptor) -> dict:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        return dict(_SCALARS[field.type])


# What the `name` rule says, beside its pattern (which can list only the characters of the Basic Multilingual Plane).
NAME_NOTE = (
    "A name: no control character (Unicode category Cc, tabs and newlines included), no invisible format "
    "character (Cf: zero-width spaces and joiners U+200B to U+200D, U+2060, U+FEFF, bidirectional controls) "
    "and no line or paragraph separator (Zl, Zp), else 400 invalid_parameter."
)


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value


def _is_required(field: descriptor.FieldDescriptor | None) -> bool:
    if field is None:
        return False
    declared = fields.rules(field)
    return declared is not None and declared.required and not fields.has_explicit_presence(field)


def _max_length(declared, limits: Mapping[str, float]) -> int | None:
    """A fixed length, or the value of the limit the upstream published; None if it did not
    (never this process's own: the gateway's value of a name may not be the upstream's)."""
    if declared.max_length_limit:
        published = limits.get(declared.max_length_limit)
        return None if published is None else int(published)
    return declared.max_length or None


def _maximum(declared, limits: Mapping[str, float]) -> float | None:
    """The fixed maximum, lowered to the value of the limit the upstream published when one is named."""
    bounds = [declared.maximum] if declared.HasField("maximum") else []
    if declared.maximum_limit and declared.maximum_limit in limits:
        bounds.append(limits[declared.maximum_limit])
    return min(bounds) if bounds else None


def _wrapped_scalar(message: descriptor.Descriptor) -> dict | None:
    if message.file.name != "google/protobuf/wrappers.proto":
        return None
    return dict(_SCALARS[message.fields_by_name["value"].type])


def document(routes: list[Route], comments: Mapping[str, str] | None = None, title: str = "voicemesh API") -> dict:
    builder = _Builder(comments or {})
    paths: dict[str, dict] = {}
    for route in routes:
        builder.limits = route.rpc.limits
        paths.setdefault(route.template.openapi_path, {})[route.http_method.lower()] = _operation(builder, route)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": title,
            "version": "v1",
            "description": "Dia text-to-dialogue with voice cloning. Every route needs `Authorization: Bearer <key>` "
            "unless it says otherwise; errors have the shape of the Error schema. Every GET route also answers "
            "HEAD: the same status and headers, without the body.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": builder.schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


def _operation(builder: _Builder, route: Route) -> dict:
    method = route.rpc.method
    request = method.input_type
    service = method.containing_service
    path_fields = set(route.template.variables)
    operation: dict = {"operationId": f"{service.name}_{method.name}", "tags": [service.name]}
    comment = builder.comments.get(method.full_name)
    if comment:
        operation["summary"] = comment.split("\n\n")[0].split(". ")[0].rstrip(".")
        operation["description"] = comment
    operation["parameters"] = [
        {"name": name, "in": "path", "required": True, "schema": builder.described(field_at(request, name))}
        for name in route.template.variables
    ]
    operation["parameters"] += [
        {"name": header.header, "in": "header", "description": header.description, "schema": {"type": "string"}}
        for header in route.rpc.rules.request_headers
    ]
    query = [] if route.body == "*" else _query_parameters(builder, request, path_fields | {route.body})
    if route.body:
        operation["requestBody"] = _request_body(builder, route, request, path_fields, query)
    if route.body not in ("", "*") and is_http_body(request.fields_by_name[route.body]):
        # With a raw body they carry the fields; a multipart form carries them itself, so none is
        # required, and none has a default that a client would send beside the form's.
        query = [_optional(parameter) for parameter in query]
    operation["parameters"] += query
    if route.rpc.rules.success_status == 204:
        success = {"204": {"description": "Done (no body)", "headers": dict(REQUEST_ID_HEADER)}}
    else:
        success = {"200": _response(builder, route)}
    if _has_ranges(route):
        operation["parameters"].append(RANGE_PARAMETER)
        success = _with_ranges(success["200"])
    if route.rpc.download is not None:
        success["307"] = REDIRECT
    operation["responses"] = {**success, **_errors(route)}
    if not route.rpc.needs_key:
        operation["security"] = []  # no key
    else:
        # The key's scope it needs (OpenAPI 3.0 lists scopes in `security` for OAuth 2 alone).
        scope = route.rpc.rules.scope
        operation["x-scope"] = scope
        needs = f"Needs a key with the scope `{scope}`." if scope else "Any key of the account may call it."
        operation["description"] = f"{operation['description']}\n\n{needs}" if "description" in operation else needs
    return operation


def _has_ranges(route: Route) -> bool:
    """Whether the route answers byte ranges (ranges.py): a GET whose answer is a google.api.HttpBody
    sent whole (a stream_method's answers are streamed, of a size unknown until they end)."""
    response = route.rpc.method.output_type
    chosen = response.fields_by_name[route.response_body] if route.response_body else None
    binary = (chosen is not None and is_http_body(chosen)) or response.full_name == "google.api.HttpBody"
    return route.http_method == "GET" and binary and route.rpc.stream is None


def _with_ranges(whole: dict) -> dict:
    """The 200 of a ranged route, with the 206 and 416 a Range header may get instead."""
    whole = {**whole, "headers": {**ACCEPT_RANGES_HEADER, **whole["headers"]}}
    partial = {
        **whole,
        "description": "The byte range asked for (Range), alone.",
        "headers": {**CONTENT_RANGE_HEADER, **whole["headers"]},
    }
    unsatisfiable = {
        "description": "The Range starts at or past the end (`range_not_satisfiable`); Content-Range says the size.",
        "headers": {
            **CONTENT_RANGE_HEADER,
            **REQUEST_ID_HEADER,
        },
        "content": {"application/json": {"schema": ERROR_REF}},
    }
    return {"200": whole, "206": partial, "416": unsatisfiable}


def _optional(parameter: dict) -> dict:
    schema = {key: value for key, value in parameter["schema"].items() if key != "default"}
    return {**{key: value for key, value in parameter.items() if key != "required"}, "schema": schema}


def _errors(route: Route) -> dict:
    statuses = dict(ERROR_STATUSES)
    if not route.rpc.needs_key:
        del statuses["401"], statuses["403"]
    if not route.body:
        del statuses["413"], statuses["415"]
    if route.rpc.server_streaming or route.rpc.client_streaming:
        statuses["501"] = "Streaming is not available yet (`not_implemented`)."
    if route.rpc.download is not None:
        statuses["410"] = GONE
    responses = {
        status: {
            "description": text,
            "headers": {**REQUEST_ID_HEADER, **(RETRY_AFTER_HEADER if int(status) in RETRY_STATUSES else {})},
            "content": {"application/json": {"schema": ERROR_REF}},
        }
        for status, text in statuses.items()
    }
    responses["default"] = {"description": "An error", "content": {"application/json": {"schema": ERROR_REF}}}
    return responses


def _query_parameters(
    builder: _Builder, message: descriptor.Descriptor, bound: set[str], prefix: str = "", seen=()
) -> list[dict]:
    """Every scalar field not bound by path or body, nested fields by dotted name."""
    parameters = []
    for field in message.fields:
        name = prefix + field.name
        if name in bound:
            continue
        nested = field.message_type
        if nested is not None and (nested.GetOptions().map_entry or is_http_body(field)):
            continue
        if nested is not None and nested.full_name not in _WELL_KNOWN and _wrapped_scalar(nested) is None:
            if not field.is_repeated and nested.full_name not in seen:
                parameters += _query_parameters(builder, nested, bound, name + ".", (*seen, message.full_name))
            continue
        parameter = {"name": name, "in": "query", "schema": builder.described(field)}
        if "description" in parameter["schema"]:
            parameter["description"] = parameter["schema"].pop("description")
        if _is_required(field):
            parameter["required"] = True
        parameters.append(parameter)
    return parameters


def _request_body(builder, route: Route, request: descriptor.Descriptor, path_fields: set[str], query: list[dict]) -> dict:
    if route.body == "*":
        schema = builder.message(request, leave_out=path_fields)
        return {"required": True, "content": {"application/json": {"schema": schema}}}
    body_field = request.fields_by_name[route.body]
    if not is_http_body(body_field):
        return {"required": True, "content": {"application/json": {"schema": builder.field(body_field)}}}
    form_fields = {
        parameter["name"]: {**parameter["schema"], **({"description": parameter["description"]} if "description" in parameter else {})}
        for parameter in query
    }
    required = [route.body, *(name for name in form_fields if _is_required(request.fields_by_name.get(name)))]
    body_schema = dict(BINARY)
    if body_field.full_name in builder.comments:
        body_schema["description"] = builder.comments[body_field.full_name]
    form = {
        "type": "object",
        "required": required,
        "properties": {route.body: body_schema, **form_fields},
    }
    return {
        "required": True,
        "content": {"multipart/form-data": {"schema": form}, "*/*": {"schema": BINARY}},
    }


def _event_schema(builder: _Builder, route: Route) -> dict:
    """One event of the route's text/event-stream answer; which events come is the method's comment."""
    comment = builder.comments.get(route.rpc.method.full_name)
    described = "One server-sent event of the stream." + (f" {comment}" if comment else "")
    return {**SSE_EVENT, "description": described}


def _response(builder: _Builder, route: Route) -> dict:
    response = route.rpc.method.output_type
    chosen = response.fields_by_name[route.response_body] if route.response_body else None
    answer: dict = {"description": "A stream of chunks" if route.rpc.server_streaming else "Success"}
    headers = {
        header.header: {"description": header.description, "schema": {"type": "string"}}
        for header in route.rpc.rules.response_headers
    }
    answer["headers"] = {**headers, **REQUEST_ID_HEADER}
    if (chosen is not None and is_http_body(chosen)) or response.full_name == "google.api.HttpBody":
        media_types = list(route.rpc.rules.response_media_types) or ["*/*"]
        if chosen is not None and chosen.full_name in builder.comments:
            answer["description"] = builder.comments[chosen.full_name]
        answer["content"] = {
            media_type: {"schema": _event_schema(builder, route) if media_type == EVENT_STREAM else BINARY}
            for media_type in media_types
        }
        return answer
    schema = builder.field(chosen) if chosen is not None else builder.message(response)
    answer["content"] = {"application/json": {"schema": schema}}
    return answer
