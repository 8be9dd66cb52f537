"""A minimal proto3 wire-format codec for u2serve.proto's messages, with the schemas as data.

The TorchServe worker's Python has no protobuf package, so the handler reads SegmentRequest and
writes SegmentResponse with this module. tests/test_wire.py checks the tables against the .proto's
descriptors and the bytes against the protobuf library.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Any

from handler.errors import Code, U2ServeError

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_UINT32_MAX = 0xFFFFFFFF
_UINT64_MAX = (1 << 64) - 1
_MAX_FIELD_NUMBER = (1 << 29) - 1
_FLOAT = struct.Struct("<f")

_WIRE_TYPE = {
    "uint32": _VARINT,
    "enum": _VARINT,
    "bool": _VARINT,
    "float": _I32,
    "string": _LEN,
    "bytes": _LEN,
    "message": _LEN,
    "map_string_float": _LEN,
}
# Proto3 defaults: a non-optional scalar equal to these is left off the wire.
_DEFAULT = {"uint32": 0, "enum": 0, "bool": False, "float": 0.0, "string": "", "bytes": b""}


class Task(enum.IntEnum):
    """u2serve.v1.Task."""

    TASK_UNSPECIFIED = 0
    MASK = 1
    CUTOUT = 2


@dataclass(frozen=True)
class Field:
    """One field of a message.

    Attributes:
        number: The field number.
        name: The field name, also the key in the decoded dict.
        kind: One of "uint32", "enum" (an int32 on the wire), "bool", "float", "string", "bytes",
            "message", "map_string_float".
        message: The nested schema when kind is "message".
        optional: True when the field has presence (proto3 `optional`, and every message field):
            encoded whenever present, even at its default.
    """

    number: int
    name: str
    kind: str
    message: Schema | None = None
    optional: bool = False


@dataclass(frozen=True)
class Schema:
    """A message: its name (for error messages) and its fields."""

    name: str
    fields: tuple[Field, ...]
    by_number: dict[int, Field] = field(init=False, repr=False, compare=False)
    by_name: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_number", {f.number: f for f in self.fields})
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})


COLOR = Schema("Color", (Field(1, "r", "uint32"), Field(2, "g", "uint32"), Field(3, "b", "uint32")))
OPTIONS = Schema(
    "Options",
    (
        Field(1, "background", "message", COLOR, optional=True),
        Field(2, "threshold", "float", optional=True),
        Field(3, "crop", "bool"),
        Field(4, "crop_margin", "uint32"),
        Field(5, "box_threshold", "float"),
        Field(6, "png_compression", "uint32", optional=True),
    ),
)
SEGMENT_REQUEST = Schema(
    "SegmentRequest",
    (
        Field(1, "task", "enum"),
        Field(2, "image", "bytes"),
        Field(3, "options", "message", OPTIONS, optional=True),
    ),
)
BOX = Schema(
    "Box",
    (
        Field(1, "x", "uint32"),
        Field(2, "y", "uint32"),
        Field(3, "width", "uint32"),
        Field(4, "height", "uint32"),
    ),
)
ERROR = Schema("Error", (Field(1, "code", "uint32"), Field(2, "message", "string")))
SEGMENT_RESPONSE = Schema(
    "SegmentResponse",
    (
        Field(1, "task", "enum"),
        Field(2, "image", "bytes"),
        Field(3, "media_type", "string"),
        Field(4, "width", "uint32"),
        Field(5, "height", "uint32"),
        Field(6, "model_name", "string"),
        Field(7, "model_version", "string"),
        Field(8, "weights", "string"),
        Field(9, "box", "message", BOX, optional=True),
        Field(10, "timings_ms", "map_string_float"),
        Field(11, "batch_size", "uint32"),
        Field(12, "error", "message", ERROR, optional=True),
        Field(13, "output_width", "uint32"),
        Field(14, "output_height", "uint32"),
    ),
)
# The entry message protoc generates for map<string, float>.
_MAP_ENTRY = Schema("MapEntry", (Field(1, "key", "string"), Field(2, "value", "float")))


class _Malformed(ValueError):
    """Raised inside the decoder; decode() adds the top-level message's name."""


def decode_request(data: bytes) -> dict[str, Any]:
    """Decodes a serialised SegmentRequest.

    Raises:
        U2ServeError: INVALID_ARGUMENT when the bytes are not a valid SegmentRequest.
    """
    return decode(SEGMENT_REQUEST, data)


def encode_response(values: dict[str, Any]) -> bytes:
    """Serialises a SegmentResponse given as a dict (nested messages as dicts).

    Raises:
        U2ServeError: INTERNAL when a value does not fit its field.
    """
    return encode(SEGMENT_RESPONSE, values)


def decode(schema: Schema, data: bytes) -> dict[str, Any]:
    """Decodes one message.

    Fields absent from the bytes are absent from the dict, so the presence of optional fields is
    known. Unknown fields are skipped. A scalar seen twice keeps the last value; a message seen
    twice is merged, as protobuf does.

    Args:
        schema: The message's schema.
        data: The serialised message.

    Returns:
        Field name to value: int, bool, float, str, bytes, dict (messages) or dict[str, float] (maps).

    Raises:
        U2ServeError: INVALID_ARGUMENT, "malformed <Message>: ...", for bytes that do not parse.
    """
    try:
        return _decode(schema, memoryview(data))
    except _Malformed as exc:
        raise U2ServeError(f"malformed {schema.name}: {exc}", Code.INVALID_ARGUMENT) from exc


def _decode(schema: Schema, buf: memoryview) -> dict[str, Any]:
    values: dict[str, Any] = {}
    nested: dict[str, list[memoryview]] = {}
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if not 1 <= number <= _MAX_FIELD_NUMBER:
            raise _Malformed(f"invalid field number {number} at byte {pos}")
        spec = schema.by_number.get(number)
        if spec is None:
            pos = _skip(buf, pos, wire_type, number)
            continue
        if wire_type != _WIRE_TYPE[spec.kind]:
            raise _Malformed(f"field {spec.name} has wire type {wire_type}, expected {_WIRE_TYPE[spec.kind]}")
        pos = _read_field(spec, buf, pos, values, nested)
    for name, chunks in nested.items():
        sub = schema.by_name[name].message
        assert sub is not None
        # Repeated occurrences of a message field merge, which is what parsing their concatenation does.
        values[name] = _decode_nested(sub, name, b"".join(chunks) if len(chunks) > 1 else chunks[0])
    return values


def _decode_nested(schema: Schema, name: str, buf: bytes | memoryview) -> dict[str, Any]:
    try:
        return _decode(schema, memoryview(buf))
    except _Malformed as exc:
        raise _Malformed(f"in {name}: {exc}") from exc


def _read_field(
    spec: Field, buf: memoryview, pos: int, values: dict[str, Any], nested: dict[str, list[memoryview]]
) -> int:
    kind = spec.kind
    if kind == "float":
        if pos + 4 > len(buf):
            raise _Malformed(f"field {spec.name} truncated")
        values[spec.name] = _FLOAT.unpack_from(buf, pos)[0]
        return pos + 4
    if kind in ("uint32", "enum", "bool"):
        value, pos = _read_varint(buf, pos)
        if kind == "bool":
            values[spec.name] = value != 0
        elif kind == "enum":
            values[spec.name] = _as_int32(value)
        elif value > _UINT32_MAX:
            raise _Malformed(f"field {spec.name} value {value} overflows uint32")
        else:
            values[spec.name] = value
        return pos
    chunk, pos = _read_length_delimited(buf, pos, spec.name)
    if kind == "message":
        nested.setdefault(spec.name, []).append(chunk)
    elif kind == "map_string_float":
        entry = _decode_nested(_MAP_ENTRY, spec.name, chunk)
        values.setdefault(spec.name, {})[entry.get("key", "")] = entry.get("value", 0.0)
    elif kind == "string":
        values[spec.name] = _utf8(chunk, spec.name)
    else:
        values[spec.name] = bytes(chunk)
    return pos


def _as_int32(value: int) -> int:
    # Enums are int32: protobuf keeps the low 32 bits of the varint, read as two's complement.
    low = value & _UINT32_MAX
    return low - (1 << 32) if low & 0x80000000 else low


def _utf8(chunk: memoryview, name: str) -> str:
    try:
        return str(chunk, "utf-8")
    except UnicodeDecodeError as exc:
        raise _Malformed(f"field {name} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result > _UINT64_MAX:
                raise _Malformed("varint exceeds 64 bits")
            return result, pos
    raise _Malformed("varint longer than 10 bytes")


def _read_length_delimited(buf: memoryview, pos: int, name: str) -> tuple[memoryview, int]:
    length, pos = _read_varint(buf, pos)
    if length > len(buf) - pos:
        raise _Malformed(f"field {name} claims {length} bytes, {len(buf) - pos} left")
    return buf[pos : pos + length], pos + length


def _skip(buf: memoryview, pos: int, wire_type: int, number: int) -> int:
    if wire_type == _VARINT:
        return _read_varint(buf, pos)[1]
    if wire_type == _LEN:
        return _read_length_delimited(buf, pos, f"#{number}")[1]
    size = {_I64: 8, _I32: 4}.get(wire_type)
    if size is None:
        raise _Malformed(f"unsupported wire type {wire_type} for field #{number}")
    if pos + size > len(buf):
        raise _Malformed(f"field #{number} truncated")
    return pos + size


def encode(schema: Schema, values: dict[str, Any]) -> bytes:
    """Serialises one message, fields in number order as protobuf does.

    A value of None counts as absent. Non-optional scalars equal to their proto3 default are left
    out; optional fields and messages are written whenever present.

    Args:
        schema: The message's schema.
        values: Field name to value; nested messages as dicts, maps as dict[str, float].

    Returns:
        The serialised message.

    Raises:
        U2ServeError: INTERNAL for an unknown field name or a value that does not fit its field
            (a bug of the caller, never of the client).
    """
    unknown = set(values) - set(schema.by_name)
    if unknown:
        raise U2ServeError(f"cannot encode {schema.name}: no field(s) {sorted(unknown)}", Code.INTERNAL)
    out = bytearray()
    for spec in schema.fields:
        value = values.get(spec.name)
        if value is None:
            continue
        try:
            _write_field(out, spec, value)
        except (TypeError, ValueError, OverflowError, struct.error, UnicodeEncodeError) as exc:
            raise U2ServeError(
                f"cannot encode {schema.name}.{spec.name} = {value!r:.80}: {exc}", Code.INTERNAL
            ) from exc
    return bytes(out)


def _write_field(out: bytearray, spec: Field, value: Any) -> None:
    kind = spec.kind
    if kind == "message":
        assert spec.message is not None
        _write_len(out, spec.number, encode(spec.message, value))
    elif kind == "map_string_float":
        for key, item in value.items():
            entry = _write_entry(key, item)
            _write_len(out, spec.number, entry)
    else:
        payload = _scalar_payload(kind, value)
        if payload is None or (not spec.optional and payload == _scalar_payload(kind, _DEFAULT[kind])):
            return
        _write_varint(out, spec.number << 3 | _WIRE_TYPE[kind])
        if _WIRE_TYPE[kind] == _LEN:
            _write_varint(out, len(payload))
        out += payload


def _write_entry(key: str, value: float) -> bytes:
    # protobuf writes both key and value of a map entry, defaults included.
    entry = bytearray()
    _write_len(entry, 1, _scalar_payload("string", key))
    _write_varint(entry, 2 << 3 | _I32)
    entry += _scalar_payload("float", value)
    return bytes(entry)


def _scalar_payload(kind: str, value: Any) -> bytes:
    """The bytes after the tag (and length); comparing them to the default's also spots -0.0."""
    if kind == "float":
        return _FLOAT.pack(float(value))
    if kind == "string":
        if not isinstance(value, str):
            raise TypeError(f"expected str, got {type(value).__name__}")
        return value.encode("utf-8")
    if kind == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"expected bytes, got {type(value).__name__}")
        return bytes(value)
    if kind == "bool":
        return b"\x01" if value else b"\x00"
    number = int(value)
    if kind == "enum":
        if number != value or not -(1 << 31) <= number < 1 << 31:
            raise ValueError(f"{value!r} is not an int32 enum value")
        # A negative int32 goes on the wire sign-extended to 64 bits (10 bytes), as protobuf does.
        number &= _UINT64_MAX
    elif number != value or not 0 <= number <= _UINT32_MAX:
        raise ValueError(f"{value!r} is not a uint32")
    varint = bytearray()
    _write_varint(varint, number)
    return bytes(varint)


def _write_len(out: bytearray, number: int, payload: bytes) -> None:
    _write_varint(out, number << 3 | _LEN)
    _write_varint(out, len(payload))
    out += payload


def _write_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
