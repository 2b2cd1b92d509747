"""The OpenAPI 3.0 document of the HTTP API, made from the same routes and descriptors the front serves."""

from __future__ import annotations

from google.protobuf import descriptor

from services.gateway import accounts
from services.gateway.discovery import Route, field_at, is_http_body

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
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string", "example": "invalid_parameter"},
                "message": {"type": "string"},
                "param": {"type": "string", "nullable": True},
            },
        }
    },
}


class _Builder:
    def __init__(self) -> None:
        self.schemas: dict[str, dict] = {"Error": ERROR_SCHEMA}

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
        properties = {
            field.name: self.field(field) for field in message.fields if field.name not in leave_out
        }
        return {"type": "object", "properties": properties}

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


def _wrapped_scalar(message: descriptor.Descriptor) -> dict | None:
    if message.file.name != "google/protobuf/wrappers.proto":
        return None
    return dict(_SCALARS[message.fields_by_name["value"].type])


def document(routes: list[Route], title: str = "voicemesh API") -> dict:
    builder = _Builder()
    paths: dict[str, dict] = {}
    for route in routes:
        paths.setdefault(route.template.openapi_path, {})[route.http_method.lower()] = _operation(builder, route)
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": "v1"},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": builder.schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


def _operation(builder: _Builder, route: Route) -> dict:
    request = route.rpc.method.input_type
    service = route.rpc.method.containing_service
    path_fields = set(route.template.variables)
    operation: dict = {
        "operationId": f"{service.name}_{route.rpc.method.name}",
        "tags": [service.name],
        "parameters": [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": builder.field(field_at(request, name)),
            }
            for name in route.template.variables
        ],
        "responses": {
            "200": _response(builder, route),
            "default": {
                "description": "An error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        },
    }
    query = [] if route.body == "*" else _query_parameters(builder, request, path_fields | {route.body})
    operation["parameters"] += query
    if route.body:
        operation["requestBody"] = _request_body(builder, route, request, path_fields, query)
    if route.rpc.path in accounts.KEYLESS_METHODS:
        operation["security"] = []  # no key
    return operation


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
        parameters.append({"name": name, "in": "query", "schema": builder.field(field)})
    return parameters


def _request_body(builder, route: Route, request: descriptor.Descriptor, path_fields: set[str], query: list[dict]) -> dict:
    if route.body == "*":
        schema = builder.message(request, leave_out=path_fields)
        return {"required": True, "content": {"application/json": {"schema": schema}}}
    body_field = request.fields_by_name[route.body]
    if not is_http_body(body_field):
        return {"required": True, "content": {"application/json": {"schema": builder.field(body_field)}}}
    form_fields = {parameter["name"]: parameter["schema"] for parameter in query}
    form = {
        "type": "object",
        "required": [route.body],
        "properties": {route.body: BINARY, **form_fields},
    }
    return {
        "required": True,
        "content": {"multipart/form-data": {"schema": form}, "*/*": {"schema": BINARY}},
    }


def _response(builder: _Builder, route: Route) -> dict:
    response = route.rpc.method.output_type
    chosen = response.fields_by_name[route.response_body] if route.response_body else None
    description = "A stream of chunks" if route.rpc.server_streaming else "Success"
    if (chosen is not None and is_http_body(chosen)) or response.full_name == "google.api.HttpBody":
        return {"description": description, "content": {"*/*": {"schema": BINARY}}}
    schema = builder.field(chosen) if chosen is not None else builder.message(response)
    return {"description": description, "content": {"application/json": {"schema": schema}}}
