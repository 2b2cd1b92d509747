"""Serialized protobuf messages with a large bytes field, built without copying it twice.

Setting a bytes field copies the value into the message, and serializing
copies it again (upb encodes into its arena, then into a Python bytes): three
copies of an uploaded file held at once. The wire format lets a field come
after the others, and a message field that comes twice is merged, so the
large field can be serialized on its own and appended to the rest of the
message: :func:`with_bytes_field` makes one copy, in the joined result.
"""

from __future__ import annotations

from google.protobuf import descriptor, message

_LENGTH_DELIMITED = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def with_bytes_field(request: message.Message, path: str, data: bytes) -> bytes:
    """`request` serialized with the bytes field at the dotted `path` (through singular message
    fields, as "audio.data") set to `data`, whatever `request` holds there."""
    fields: list[descriptor.FieldDescriptor] = []
    described = request.DESCRIPTOR
    for name in path.split("."):
        field = described.fields_by_name[name]
        fields.append(field)
        described = field.message_type
    if fields[-1].type != descriptor.FieldDescriptor.TYPE_BYTES or any(f.is_repeated for f in fields):
        raise ValueError(f"{path} is not a singular bytes field reached through singular messages")
    # Innermost first: each header is the field's tag and the length of all that follows it.
    headers: list[bytes] = []
    length = len(data)
    for field in reversed(fields):
        header = _varint(field.number << 3 | _LENGTH_DELIMITED) + _varint(length)
        headers.append(header)
        length += len(header)
    return b"".join([request.SerializeToString(), *reversed(headers), data])
