"""HTTP request → gRPC request message, and gRPC response → HTTP body, per a Route.

The rules are those of google.api.http (as grpc-gateway applies them):

* path variables set the fields they name, converted to the field's type;
* ``body: "*"`` fills the whole request from the JSON body; ``body: "<field>"``
  fills that field, from JSON, or, when the field is a ``google.api.HttpBody``,
  from the raw body and its Content-Type (or from the file part of a
  ``multipart/form-data`` form, whose other fields count as query parameters);
* every field bound neither by the path nor by the body may come as a query
  parameter (``?page_size=10``, dotted paths for nested fields, repeated for
  repeated fields);
* ``response_body: "<field>"`` answers with that field alone; an HttpBody
  answer is sent as its raw data with its content type.

A JSON body must come as ``application/json`` (a charset or another
``+json`` type will do) or with no Content-Type at all (some clients send
none): text, XML or a form is 415 unsupported_media_type, never guessed to be
JSON. A body nested deeper than GATEWAY_MAX_JSON_DEPTH is INVALID_JSON.

JSON uses the proto field names (snake_case); every bad input is an
INVALID_PARAMETER error naming the field at fault. A number must be a JSON
number: protobuf's JSON parser would also take ``"1.0"``, but a client that
sends text where the API documents a number has a bug worth hearing about.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from google.protobuf import descriptor, json_format, message, message_factory

_FieldType = descriptor.FieldDescriptor

from runtime import wire
from runtime.errors import ApiError, invalid_argument, invalid_parameter
from services.gateway.edge.config import MAX_JSON_DEPTH
from services.gateway.edge.discovery import Route, field_at, is_http_body
from services.gateway.edge.errors import unsupported_media_type

JSON_CONTENT_TYPE = "application/json"
DEFAULT_BINARY_TYPE = "application/octet-stream"

_TRUE = {"true", "1", "on"}  # "on": what a browser sends for a ticked checkbox
_FALSE = {"false", "0", "off"}


@dataclass
class FilePart:
    """The file of a multipart form."""

    name: str
    data: bytes
    content_type: str


@dataclass
class HttpInput:
    """What the transcoder needs of an HTTP request."""

    path_params: dict[str, str] = field(default_factory=dict)
    # Query parameters, and the text fields of a multipart form, in order.
    params: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    content_type: str = ""  # without parameters, lower case
    files: list[FilePart] = field(default_factory=list)  # multipart file parts
    multipart: bool = False


@dataclass
class HttpOutput:
    content_type: str
    body: bytes
    # A google.api.HttpBody's data (not JSON made here): its byte ranges may be asked for (ranges.py).
    http_body: bool = False


# --- request ----------------------------------------------------------------


def to_grpc_request(route: Route, http: HttpInput) -> message.Message:
    request = route.rpc.request_class()
    descriptor_ = request.DESCRIPTOR
    bound = list(route.template.variables)
    if route.body == "*":
        _fill_from_json_body(request, route, http)
    elif route.body:
        bound.append(route.body)
        body_field = descriptor_.fields_by_name[route.body]
        if is_http_body(body_field):
            _fill_http_body(getattr(request, route.body), body_field.name, http, descriptor_)
        else:
            _fill_field_from_json(request, route, body_field, http)
    elif http.multipart:
        raise _json_only(route)

    # Query parameters (and form fields) never override the path or the body.
    _apply_params(request, http.params, bound, whole_body=route.body == "*")
    # Path variables go last: they name the resource, whatever the body says.
    for path, value in http.path_params.items():
        _set_param(request, path, [value], source="path")
    return request


def to_grpc_payload(route: Route, http: HttpInput) -> bytes:
    """The request message of to_grpc_request, serialized; an HttpBody body (an uploaded file) is
    taken out of `http` and copied once, into the result (runtime.wire), not three times."""
    data = _take_http_body_data(route, http)
    request = to_grpc_request(route, http)
    if data is None:
        return request.SerializeToString()
    return wire.with_bytes_field(request, f"{route.body}.data", data)


def _take_http_body_data(route: Route, http: HttpInput) -> bytes | None:
    """The bytes of an HttpBody body, removed from `http` (to_grpc_request fills in the rest)."""
    if route.body in ("", "*") or not is_http_body(route.rpc.request_class.DESCRIPTOR.fields_by_name[route.body]):
        return None
    if not http.multipart:
        data, http.body = http.body, b""
        return data
    part = _file_part(route.body, http.files, route.rpc.request_class.DESCRIPTOR)
    data, part.data = part.data, b""
    return data


def takes_json(route: Route) -> bool:
    """Whether the route's body is JSON (the whole request, or a field that is not an HttpBody)."""
    if route.body in ("", "*"):
        return route.body == "*"
    return not is_http_body(route.rpc.request_class.DESCRIPTOR.fields_by_name[route.body])


def _json_only(route: Route, media_type: str = "multipart/form-data") -> ApiError:
    return unsupported_media_type(f"{route} takes a JSON body (Content-Type: application/json), not {media_type}")


def _require_json(route: Route, http: HttpInput) -> None:
    media_type = http.content_type.split(";")[0].strip().lower()
    if http.multipart or media_type == "multipart/form-data":
        raise _json_only(route)
    if media_type and media_type != JSON_CONTENT_TYPE and not media_type.endswith("+json"):
        raise _json_only(route, media_type[:100])


def _parse_json(http: HttpInput):
    if not http.body.strip():
        return {}
    limit = MAX_JSON_DEPTH.value
    too_deep = invalid_argument("INVALID_JSON", f"the request body is nested more than {limit} levels deep")
    try:
        document = json.loads(http.body)
    except RecursionError:  # too deep for the parser itself
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as error:
        raise invalid_argument("INVALID_JSON", f"the request body is not valid JSON: {error}") from None
    if _depth(document, limit) > limit:
        raise too_deep  # before anything recursive (protobuf's parser) walks it
    _refuse_lone_surrogates(document)
    return document


def _depth(document, limit: int) -> int:
    """How deep objects and lists nest (a flat object is 1), counted up to limit + 1, without recursion."""
    level, depth = [document], 0
    while depth <= limit:
        containers = [item for item in level if isinstance(item, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [
            item for container in containers for item in (container.values() if isinstance(container, dict) else container)
        ]
    return depth


def _refuse_lone_surrogates(document) -> None:
    """A lone UTF-16 surrogate escape ("\\ud800", which json.loads keeps) is no Unicode text: in an object key
    INVALID_JSON, in a string INVALID_PARAMETER naming its field. Walked without recursion, before protobuf's
    parser, which looks keys up as field names (and a string given for a message field, character by
    character) and fails inside on one."""
    stack: list[tuple[object, str]] = [(document, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if not key.isascii() and not _is_text(key):
                    raise invalid_argument(
                        "INVALID_JSON",
                        "the request body is not valid JSON text: an object key holds a lone UTF-16 surrogate "
                        "escape (\\ud800 to \\udfff), which is no Unicode character",
                    )
                stack.append((value, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            stack.extend((value, path) for value in item)
        elif isinstance(item, str) and not item.isascii() and not _is_text(item):
            param = path or "body"
            raise invalid_parameter(
                param,
                f"{param!r} holds a lone UTF-16 surrogate escape (\\ud800 to \\udfff), which is no Unicode character",
            )


def _is_text(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _fill_from_json_body(request: message.Message, route: Route, http: HttpInput) -> None:
    _require_json(route, http)
    document = _parse_json(http)
    if not isinstance(document, dict):
        raise invalid_argument("INVALID_JSON", "the request body must be a JSON object")
    _parse_dict(document, request, prefix="")


def _fill_field_from_json(request: message.Message, route: Route, body_field, http: HttpInput) -> None:
    """The JSON body is the field's message: errors name its fields as the body does ("cfg_scale")."""
    _require_json(route, http)
    document = _parse_json(http)
    if not isinstance(document, dict):
        raise invalid_argument("INVALID_JSON", "the request body must be a JSON object")
    _parse_dict(document, getattr(request, body_field.name), prefix="")


def _fill_http_body(target: message.Message, name: str, http: HttpInput, request: descriptor.Descriptor) -> None:
    if not http.multipart:
        target.data = http.body
        target.content_type = http.content_type or DEFAULT_BINARY_TYPE
        return
    part = _file_part(name, http.files, request)
    target.data = part.data
    target.content_type = part.content_type or DEFAULT_BINARY_TYPE


def _file_part(name: str, files: list[FilePart], request: descriptor.Descriptor) -> FilePart:
    """The part named like the body field, or else the form's only file.

    A file part named like another field is refused, naming it: the form sends fields as text parts,
    and one sent as a file would otherwise be dropped unseen. So is a file beside the named one."""
    for part in files:
        if part.name != name and _is_parameter(request, part.name):
            raise invalid_parameter(
                part.name, f"{part.name!r} is a text field of the form: send it as a text part, not a file part"
            )
    named = [part for part in files if part.name == name]
    if named and len(files) > len(named):
        extra = next(part.name for part in files if part.name != name)
        raise invalid_parameter(extra, f"unknown file part {extra!r}: the form takes one file, in the part {name!r}")
    chosen = named or files
    if not chosen:
        raise invalid_parameter(name, f"the form has no file part {name!r}")
    if len(chosen) > 1:
        raise invalid_parameter(name, f"send one file part {name!r}, not {len(chosen)}")
    return chosen[0]


def _is_parameter(request: descriptor.Descriptor, name: str) -> bool:
    try:
        _param_field(request, name)
    except ValueError:
        return False
    return True


def _apply_params(
    request: message.Message, params: list[tuple[str, str]], bound: list[str], whole_body: bool
) -> None:
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    for name, values in grouped.items():
        if whole_body:
            raise invalid_parameter(name, f"unknown query parameter {name!r}: this endpoint takes its fields in the JSON body")
        taken = next((b for b in bound if name == b or name.startswith(b + ".")), None)
        if taken is not None:
            raise invalid_parameter(name, f"{name!r} is set by the path or body, not by a query parameter")
        _set_param(request, name, values, source="query")


def _set_param(request: message.Message, name: str, values: list[str], source: str) -> None:
    """Set the (dotted) field `name` from text, converted to its type."""
    try:
        leaf = _param_field(request.DESCRIPTOR, name)
    except ValueError:
        raise invalid_parameter(name, f"unknown {source} parameter {name!r}") from None
    if not leaf.is_repeated and len(values) > 1:
        raise invalid_parameter(name, f"{name!r} is given {len(values)} times but takes one value")
    converted = [_typed(leaf, name, value) for value in values]
    value = converted if leaf.is_repeated else converted[0]
    # Build {"a": {"b": value}} for "a.b" and let json_format do the typing rules.
    document: object = value
    for part in reversed(name.split(".")):
        document = {part: document}
    try:
        json_format.ParseDict(document, request)
    except json_format.ParseError:
        raise invalid_parameter(name, _invalid_value(name, leaf, values[0], single=True)) from None


def _param_field(message_descriptor: descriptor.Descriptor, name: str) -> descriptor.FieldDescriptor:
    """The field a parameter names; only scalars, enums and their lists can be parameters."""
    leaf = field_at(message_descriptor, name)
    if leaf.message_type is not None and leaf.message_type.full_name not in _TEXT_MESSAGES:
        raise ValueError("a message field is not a parameter")
    return leaf


# Well-known types whose JSON form is a single string or number, so a parameter can carry them.
_TEXT_MESSAGES = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    *(f"google.protobuf.{kind}Value" for kind in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")),
}


def _typed(leaf: descriptor.FieldDescriptor, name: str, value: str):
    """Text as the JSON value json_format expects; only booleans need converting."""
    is_bool = leaf.type == descriptor.FieldDescriptor.TYPE_BOOL or (
        leaf.message_type is not None and leaf.message_type.full_name == "google.protobuf.BoolValue"
    )
    if not is_bool:
        return value
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise invalid_parameter(name, _invalid_value(name, leaf, value, single=True))


def _parse_dict(document: dict, target: message.Message, prefix: str) -> None:
    _refuse_numbers_as_text(document, target.DESCRIPTOR, prefix)
    try:
        json_format.ParseDict(document, target)
    except json_format.ParseError as error:
        param, problem = _find_bad_field(document, target.DESCRIPTOR, prefix, error)
        raise invalid_parameter(param, problem) from None


_NUMERIC = {
    _FieldType.CPPTYPE_INT32,
    _FieldType.CPPTYPE_INT64,
    _FieldType.CPPTYPE_UINT32,
    _FieldType.CPPTYPE_UINT64,
    _FieldType.CPPTYPE_DOUBLE,
    _FieldType.CPPTYPE_FLOAT,
}


def _refuse_numbers_as_text(document: dict, message_descriptor: descriptor.Descriptor, prefix: str) -> None:
    """INVALID_PARAMETER for a JSON string given to a number field (also in lists, maps and nested messages)."""
    fields = {**{f.json_name: f for f in message_descriptor.fields}, **message_descriptor.fields_by_name}
    for key, value in document.items():
        found = fields.get(key)
        if found is None or value is None:
            continue  # unknown fields are json_format's to name
        path = prefix + key
        entry = found.message_type if found.message_type is not None and found.message_type.GetOptions().map_entry else None
        if entry is not None:
            target = entry.fields_by_name["value"]
            values = list(value.values()) if isinstance(value, dict) else []
        else:
            target = found
            values = value if found.is_repeated and isinstance(value, list) else [value]
        for item in values:
            if target.cpp_type in _NUMERIC and target.enum_type is None and isinstance(item, str):
                raise invalid_parameter(path, _invalid_value(path, found, value, single=False))
            if _is_plain_message(target) and isinstance(item, dict):
                _refuse_numbers_as_text(item, target.message_type, path + ".")


def _find_bad_field(
    document: dict, message_descriptor: descriptor.Descriptor, prefix: str, error: Exception
) -> tuple[str, str]:
    """Which field of a JSON object json_format refused, found by parsing one field at a time.

    ParseError's text names the field in several shapes; parsing field by field
    finds it without depending on those texts.
    """
    fields = {**{f.json_name: f for f in message_descriptor.fields}, **message_descriptor.fields_by_name}
    cls = message_factory.GetMessageClass(message_descriptor)
    for key, value in document.items():
        path = prefix + key
        found = fields.get(key)
        if found is None:
            return path, f"unknown field {path!r}"
        try:
            json_format.ParseDict({key: value}, cls())
        except json_format.ParseError as field_error:
            nested = found.message_type
            if _is_plain_message(found) and isinstance(value, dict):
                return _find_bad_field(value, nested, path + ".", field_error)
            return path, _invalid_value(path, found, value, single=False)
    # No single field fails on its own (e.g. two members of one oneof): name the object.
    return prefix.rstrip(".") or "body", f"invalid request: {str(error).splitlines()[0]}"


def _is_plain_message(found: descriptor.FieldDescriptor) -> bool:
    """A singular field of one of our messages (not a well-known type with a JSON form of its own)."""
    nested = found.message_type
    return nested is not None and not found.is_repeated and not nested.full_name.startswith("google.protobuf.")


# --- what a field expects, in words -------------------------------------------

_Type = descriptor.FieldDescriptor
# 32-bit ranges are worth saying; 64-bit ones are too long to help anyone.
_INT_RANGES = {
    _Type.TYPE_INT32: (-(2**31), 2**31 - 1),
    _Type.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _Type.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _Type.TYPE_UINT32: (0, 2**32 - 1),
    _Type.TYPE_FIXED32: (0, 2**32 - 1),
}
_INT64 = {_Type.TYPE_INT64, _Type.TYPE_SINT64, _Type.TYPE_SFIXED64}
_UINT64 = {_Type.TYPE_UINT64, _Type.TYPE_FIXED64}
_MESSAGE_WORDS = {
    "google.protobuf.Timestamp": "an RFC 3339 time such as 2026-01-31T12:00:00Z",
    "google.protobuf.Duration": "a duration such as 1.5s",
    "google.protobuf.FieldMask": "comma-separated field names",
    "google.protobuf.BoolValue": "true or false",
    "google.protobuf.StringValue": "a string",
    "google.protobuf.BytesValue": "base64 text",
    "google.protobuf.DoubleValue": "a number",
    "google.protobuf.FloatValue": "a number",
}


def _expected(found: descriptor.FieldDescriptor, single: bool) -> str:
    """What a value of the field looks like; `single`: one element of a repeated field."""
    if found.message_type is not None and found.message_type.GetOptions().map_entry:
        return f"an object whose values are {_expected(found.message_type.fields_by_name['value'], True)}"
    if found.is_repeated and not single:
        return f"a list, each item {_expected(found, True)}"
    if found.enum_type is not None:
        return "one of " + ", ".join(value.name for value in found.enum_type.values)
    if found.message_type is not None:
        name = found.message_type.full_name
        if name in _MESSAGE_WORDS:
            return _MESSAGE_WORDS[name]
        if name.endswith("Int32Value") or name.endswith("Int64Value"):
            return "an integer"
        return "a JSON object"
    if found.type in _INT_RANGES:
        low, high = _INT_RANGES[found.type]
        return f"an integer from {low} to {high}"
    if found.type in _INT64:
        return "an integer"
    if found.type in _UINT64:
        return "an integer from 0"
    return {
        _Type.TYPE_BOOL: "true or false",
        _Type.TYPE_STRING: "a string",
        _Type.TYPE_BYTES: "base64 text",
        _Type.TYPE_DOUBLE: "a number",
        _Type.TYPE_FLOAT: "a number",
    }.get(found.type, "a value of another type")


def _invalid_value(path: str, found: descriptor.FieldDescriptor, value, single: bool) -> str:
    shown = json.dumps(value) if not isinstance(value, str) else repr(value)
    got = f", got {shown}" if len(shown) <= 40 else ""
    return f"invalid value for {path!r}: expected {_expected(found, single)}{got}"


# --- response ---------------------------------------------------------------


def to_json(value: message.Message) -> dict:
    document = json_format.MessageToDict(
        value,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    _int64_as_numbers(document, value.DESCRIPTOR)
    return document


# (Not _INT64, the field types above: named so, it hid them and int64 fields were "a value of another type".)
_CPP_INT64 = {_FieldType.CPPTYPE_INT64, _FieldType.CPPTYPE_UINT64}


def _int64_as_numbers(document: dict, message_descriptor: descriptor.Descriptor) -> None:
    """Every 64-bit integer as a JSON number, as the API takes them and /openapi.json says.

    protobuf's JSON writes one that a double cannot hold exactly (a seed of
    2**63 - 1) as a string; JSON itself has no such limit, Python's parser
    none either (a JavaScript client rounds it).
    """
    for found in message_descriptor.fields:
        if found.name not in document:
            continue
        value = document[found.name]
        entry = found.message_type if found.message_type is not None and found.message_type.GetOptions().map_entry else None
        target = entry.fields_by_name["value"] if entry is not None else found
        if entry is not None:
            items, put = list(value.items()), value.__setitem__
        elif found.is_repeated:
            items, put = list(enumerate(value)), value.__setitem__
        else:
            items, put = [(found.name, value)], document.__setitem__
        nested = target.message_type
        for key, item in items:
            if nested is None and target.cpp_type in _CPP_INT64 and isinstance(item, str):
                put(key, int(item))
            elif nested is not None and isinstance(item, dict) and not nested.full_name.startswith("google."):
                _int64_as_numbers(item, nested)  # our own messages (well-known types have JSON forms of their own)


def to_http_response(route: Route, response: message.Message) -> HttpOutput:
    if route.response_body:
        chosen = response.DESCRIPTOR.fields_by_name[route.response_body]
        value = getattr(response, route.response_body)
        if is_http_body(chosen):
            return HttpOutput(value.content_type or DEFAULT_BINARY_TYPE, value.data, http_body=True)
        if chosen.message_type is not None and not chosen.is_repeated:
            document = to_json(value)
        else:
            document = to_json(response)[route.response_body]
    elif response.DESCRIPTOR.full_name == "google.api.HttpBody":
        return HttpOutput(response.content_type or DEFAULT_BINARY_TYPE, response.data, http_body=True)
    else:
        document = to_json(response)
    return HttpOutput(JSON_CONTENT_TYPE, json.dumps(document, ensure_ascii=False).encode())
