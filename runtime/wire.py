"""Serialized protobuf messages with a large bytes field (an uploaded file), without extra copies.

Setting a bytes field copies the value into the message, and serializing
copies it again (upb encodes into its arena, then into a Python bytes): three
copies of an upload held at once. Parsing copies it into the message, and
reading the field copies it once more. The wire format allows better:

* :func:`with_bytes_field` serializes the rest of a message and appends the
  large field after it (a field may come after the others, and a message field
  that comes twice is merged): one copy, in the joined result;
* :func:`in_pieces` serializes a message as a client stream of them, the large
  field cut in pieces (the first message with the other fields): one copy of
  one piece at a time, for an RPC that takes the field in pieces;
* :func:`lift_bytes_field` parses a received message without its large field,
  which it returns as a view of the received bytes: no copy.
"""

from __future__ import annotations

from typing import Iterator, TypeVar

from google.protobuf import descriptor, message

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
M = TypeVar("M", bound=message.Message)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _path(described: descriptor.Descriptor, path: str) -> list[descriptor.FieldDescriptor]:
    """The fields along a dotted path to a singular bytes field, through singular message fields."""
    fields: list[descriptor.FieldDescriptor] = []
    for name in path.split("."):
        field = described.fields_by_name[name]
        fields.append(field)
        described = field.message_type
    if fields[-1].type != descriptor.FieldDescriptor.TYPE_BYTES or any(f.is_repeated for f in fields):
        raise ValueError(f"{path} is not a singular bytes field reached through singular messages")
    return fields


def with_bytes_field(request: message.Message, path: str, data: bytes | memoryview) -> bytes:
    """`request` serialized with the bytes field at the dotted `path` (through singular message
    fields, as "audio.data") set to `data`, whatever `request` holds there."""
    fields = _path(request.DESCRIPTOR, path)
    # Innermost first: each header is the field's tag and the length of all that follows it.
    headers: list[bytes] = []
    length = len(data)
    for field in reversed(fields):
        header = _varint(field.number << 3 | _LENGTH_DELIMITED) + _varint(length)
        headers.append(header)
        length += len(header)
    return b"".join([request.SerializeToString(), *reversed(headers), data])


def in_pieces(request: message.Message, path: str, data: bytes | memoryview, piece_bytes: int) -> Iterator[bytes]:
    """Messages that carry `data` in pieces of at most `piece_bytes` at the dotted `path`: the
    first is `request` with the first piece (or none, for empty data), each later one only the
    next piece. Each message is made when it is asked for."""
    view = memoryview(data)
    yield with_bytes_field(request, path, view[:piece_bytes])
    empty = type(request)()
    for start in range(piece_bytes, len(view), piece_bytes):
        yield with_bytes_field(empty, path, view[start : start + piece_bytes])


def lift_bytes_field(wire: bytes, message_class: type[M], path: str) -> tuple[M, memoryview]:
    """`wire` parsed as `message_class` without the bytes field at the dotted `path`, and that
    field's value as a view of `wire` (empty when absent). Malformed input raises protobuf's DecodeError."""
    fields = _path(message_class.DESCRIPTOR, path)
    view = memoryview(wire)
    try:
        kept, found = _without(view, 0, len(view), [field.number for field in fields])
    except (IndexError, ValueError):  # truncated, or groups: protobuf decides, the slow way
        parsed = message_class.FromString(wire)  # DecodeError when malformed
        parent = parsed
        for field in fields[:-1]:
            parent = getattr(parent, field.name)
        value = getattr(parent, fields[-1].name)
        parent.ClearField(fields[-1].name)
        return parsed, memoryview(value)
    parsed = message_class.FromString(b"".join(kept))
    return parsed, view[found[0] : found[1]] if found else view[0:0]


def _without(view: memoryview, start: int, end: int, numbers: list[int]) -> tuple[list, tuple[int, int] | None]:
    """The fields of view[start:end] without the one at the path of field `numbers` (nested
    messages re-encoded without it), and where the payload of its last occurrence lies."""
    kept: list = []
    found = None
    for number, kind, field_start, payload_start, field_end in _fields(view, start, end):
        if number != numbers[0] or kind != _LENGTH_DELIMITED:
            kept.append(view[field_start:field_end])
        elif len(numbers) == 1:
            found = (payload_start, field_end)  # a later occurrence replaces an earlier one
        else:
            inner, inner_found = _without(view, payload_start, field_end, numbers[1:])
            found = inner_found or found
            body = b"".join(inner)
            kept.append(_varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(body)) + body)
    return kept, found


def _fields(view: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire type, where the field starts, where its payload starts, where it ends) of each field."""
    position = start
    while position < end:
        field_start = position
        key, position = _read_varint(view, position)
        kind = key & 7
        payload_start = position
        if kind == _VARINT:
            _, position = _read_varint(view, position)
        elif kind == _FIXED64:
            position += 8
        elif kind == _FIXED32:
            position += 4
        elif kind == _LENGTH_DELIMITED:
            length, payload_start = _read_varint(view, position)
            position = payload_start + length
        else:
            raise ValueError(f"wire type {kind} is not used by proto3")
        if position > end:
            raise ValueError("truncated field")
        yield key >> 3, kind, field_start, payload_start, position


def _read_varint(view: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
