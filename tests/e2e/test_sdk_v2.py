"""The Python SDK's Open Inference Protocol (KServe v2) helpers, bw.v2.

No daemon: bodies are built here by hand (JSON plus Triton's binary tensor
layout, packed with struct) and handed to bw.v2.parse / bw.v2.response as
baton would hand them to a worker. One test runs a real worker process over a
socketpair to check that a handler can return bw.v2.response(...) as is.
"""

import json
import math
import os
import socket
import struct
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SDK_DIR = os.path.join(REPO, "sdk", "python")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
sys.path.insert(0, SDK_DIR)

import baton_worker as bw  # noqa: E402

v2 = bw.v2


def body(header, *blobs):
    """(payload, meta) as baton hands a v2 request to a worker."""
    head = json.dumps(header).encode()
    meta = {"protocol": "v2", "content_type": "application/json", "model_name": "m"}
    if blobs:
        meta["v2_header_length"] = len(head)
    return head + b"".join(blobs), meta


def split(payload, meta):
    """A response payload -> (JSON header dict, binary bytes after it)."""
    n = meta.get("v2_header_length", len(payload))
    return json.loads(payload[:n]), payload[n:]


def bytes_elems(*items):
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def request(outputs=None, parameters=None, rid=None):
    h = {"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [0]}]}
    if outputs is not None:
        h["outputs"] = outputs
    if parameters is not None:
        h["parameters"] = parameters
    if rid is not None:
        h["id"] = rid
    return v2.parse(*body(h))


# --- parse ------------------------------------------------------------------

def test_json_fp32_nested_data_is_flattened_row_major():
    req = v2.parse(*body({
        "id": "r1", "parameters": {"priority": 2},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                    "data": [[1, 2, 3], [4, 5, 6.5]]}],
        "outputs": [{"name": "y"}]}))
    assert isinstance(req, v2.InferRequest)
    assert req.id == "r1"
    assert req.parameters == {"priority": 2}
    assert req.outputs == [{"name": "y"}]
    assert req.model_name == "m"
    x = req.input("x")
    assert isinstance(x, v2.Tensor)
    assert (x.name, x.datatype, x.shape) == ("x", "FP32", [2, 3])
    assert x.data == [1.0, 2.0, 3.0, 4.0, 5.0, 6.5]
    assert all(type(v) is float for v in x.data)
    assert x.raw is None and x.binary is False
    assert [t.name for t in req.inputs] == ["x"]


def test_deeper_nesting_and_no_id():
    req = v2.parse(*body({"inputs": [{"name": "x", "datatype": "INT32",
                                      "shape": [2, 2, 2],
                                      "data": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]}]}))
    assert req.id is None and req.parameters == {} and req.outputs == []
    assert req.input("x").data == [1, 2, 3, 4, 5, 6, 7, 8]


def test_binary_fp32_and_json_int64_mixed():
    a = struct.pack("<3f", 1.5, -2.0, 0.25)
    c = struct.pack("<2i", -7, 2 ** 31 - 1)
    payload, meta = body({"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [1, 3],
         "parameters": {"binary_data_size": len(a), "other": 1}},
        {"name": "b", "datatype": "INT64", "shape": [2], "data": [-(2 ** 63), 2 ** 63 - 1]},
        {"name": "c", "datatype": "INT32", "shape": [2],
         "parameters": {"binary_data_size": len(c)}},
    ]}, a, c)
    req = v2.parse(payload, meta)
    ta, tb, tc = req.inputs
    assert ta.binary and ta.raw == a and type(ta.raw) is bytes
    assert ta.data == [1.5, -2.0, 0.25]
    assert ta.shape == [1, 3]
    assert ta.parameters == {"other": 1}
    assert not tb.binary and tb.raw is None
    assert tb.data == [-(2 ** 63), 2 ** 63 - 1]
    assert tc.binary and tc.raw == c and tc.data == [-7, 2 ** 31 - 1]
    assert req.input("c") is tc


def test_every_fixed_size_datatype_binary():
    cases = [("UINT8", "B", [0, 255]), ("UINT16", "H", [1, 65535]),
             ("UINT32", "I", [2, 2 ** 32 - 1]), ("UINT64", "Q", [3, 2 ** 64 - 1]),
             ("INT8", "b", [-128, 127]), ("INT16", "h", [-32768, 5]),
             ("INT32", "i", [-(2 ** 31), 6]), ("INT64", "q", [-(2 ** 63), 7]),
             ("FP64", "d", [1e300, -0.1])]
    inputs, blobs = [], []
    for dt, code, values in cases:
        raw = struct.pack("<%d%s" % (len(values), code), *values)
        inputs.append({"name": dt.lower(), "datatype": dt, "shape": [len(values)],
                       "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    req = v2.parse(*body({"inputs": inputs}, *blobs))
    for (dt, _, values), t, raw in zip(cases, req.inputs, blobs):
        assert t.datatype == dt and t.raw == raw
        assert t.data == values, dt


def test_bytes_binary_and_json():
    raw = bytes_elems(b"abc", b"", b"\xff\x00")
    req = v2.parse(*body({"inputs": [
        {"name": "s", "datatype": "BYTES", "shape": [3],
         "parameters": {"binary_data_size": len(raw)}},
        {"name": "j", "datatype": "BYTES", "shape": [1, 2], "data": [["hé", ""]]},
    ]}, raw))
    s, j = req.inputs
    assert s.binary and s.raw == raw
    assert s.data == [b"abc", b"", b"\xff\x00"]
    assert j.data == ["hé".encode(), b""]
    assert all(type(v) is bytes for v in s.data + j.data)


def test_bool_binary_and_json():
    req = v2.parse(*body({"inputs": [
        {"name": "b", "datatype": "BOOL", "shape": [3],
         "parameters": {"binary_data_size": 3}},
        {"name": "j", "datatype": "BOOL", "shape": [2], "data": [True, False]},
    ]}, b"\x01\x00\x01"))
    assert req.input("b").data == [True, False, True]
    assert all(type(v) is bool for v in req.input("b").data)
    assert req.input("j").data == [True, False]


def test_fp16_round_trip():
    values = [1.0, -2.5, 0.0009765625, 65504.0]
    raw = struct.pack("<4e", *values)
    assert raw[:2] == b"\x00\x3c"          # 1.0 in IEEE half precision
    req = v2.parse(*body({"inputs": [{"name": "h", "datatype": "FP16", "shape": [2, 2],
                                      "parameters": {"binary_data_size": 8}}],
                          "parameters": {"binary_data_output": True}}, raw))
    h = req.input("h")
    assert h.data == values
    payload, meta = v2.response([v2.Tensor("out", "FP16", [2, 2], h.data)], request=req)
    head, blob = split(payload, meta)
    assert blob == raw
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    # Beyond FP16's range rounds to infinity, as IEEE (and numpy) do.
    payload, meta = v2.response([v2.Tensor("o", "FP16", [2], [1e6, -1e6])], request=req)
    assert split(payload, meta)[1] == b"\x00\x7c\x00\xfc"


def test_bf16_decode_and_round_to_nearest_even():
    raw = struct.pack("<3H", 0x3F80, 0xC020, 0x7F80)
    req = v2.parse(*body({"inputs": [{"name": "b", "datatype": "BF16", "shape": [3],
                                      "parameters": {"binary_data_size": 6}}],
                          "parameters": {"binary_data_output": True}}, raw))
    assert req.input("b").data == [1.0, -2.5, math.inf]
    # 1 + 2**-8 is halfway between 1.0 and 1.0078125: ties go to the even 0x3F80;
    # 1 + 3 * 2**-8 is halfway between 0x3F81 and 0x3F82: to 0x3F82.
    payload, meta = v2.response(
        [v2.Tensor("o", "BF16", [4], [1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, math.nan])],
        request=req)
    got = struct.unpack("<4H", split(payload, meta)[1])
    assert got[:3] == (0x3F80, 0x3F82, 0xC020)
    assert got[3] & 0x7F80 == 0x7F80 and got[3] & 0x7F   # still a NaN


def test_missing_input_is_a_key_error_and_a_reject():
    req = request()
    with pytest.raises(KeyError) as e:
        req.input("nope")
    assert isinstance(e.value, bw.Reject)
    assert "nope" in str(e.value)


@pytest.mark.parametrize("header,blobs,hlen", [
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}]},
     (), None),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                  "parameters": {"binary_data_size": 4}}]}, (b"\0" * 4,), "auto"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                  "parameters": {"binary_data_size": 4}}]}, (b"\0" * 4,), None),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                  "parameters": {"binary_data_size": 4}}]}, (b"\0" * 6,), "auto"),
    ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2],
                  "parameters": {"binary_data_size": 9}}]},
     (bytes_elems(b"abcde"),), "auto"),
    ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1],
                  "parameters": {"binary_data_size": 6}}]},
     (struct.pack("<I", 5) + b"ab",), "auto"),
    ({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]}, (), None),
    ({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}]}, (), None),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["1"]}]}, (), None),
    ({"inputs": [{"name": "x", "datatype": "FP9", "shape": [1], "data": [1]}]}, (), None),
    ({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]},
                 {"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}]}, (), None),
    ({"outputs": []}, (), None),
])
def test_unreadable_requests_are_rejected(header, blobs, hlen):
    payload = json.dumps(header).encode()
    meta = {}
    if hlen == "auto":
        meta["v2_header_length"] = len(payload)
    payload += b"".join(blobs)
    with pytest.raises(bw.Reject) as e:
        v2.parse(payload, meta)
    assert isinstance(e.value, ValueError)


def test_not_json_is_rejected():
    with pytest.raises(bw.Reject):
        v2.parse(b"\x89PNG not json", {})


# --- wants_binary -----------------------------------------------------------

def test_wants_binary_per_output():
    req = request(outputs=[{"name": "a", "parameters": {"binary_data": True}},
                           {"name": "b", "parameters": {"binary_data": False}},
                           {"name": "c"}])
    assert req.wants_binary("a") is True
    assert req.wants_binary("b") is False
    assert req.wants_binary("c") is False
    assert req.wants_binary("unlisted") is False


def test_wants_binary_via_binary_data_output():
    req = request(outputs=[{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
                  parameters={"binary_data_output": True})
    assert req.wants_binary("a") is True
    assert req.wants_binary("b") is False      # the output's own setting wins
    assert request(parameters={"binary_data_output": True}).wants_binary("any") is True
    assert request(parameters={"binary_data_output": False}).wants_binary("any") is False


# --- response -----------------------------------------------------------------

def test_response_json():
    req = request(rid="abc")
    payload, meta = v2.response(
        [v2.Tensor("y", "FP32", [2, 2], [[1, 2.5], [3, -4]]),
         v2.Tensor("n", "INT64", [3], [1, -2, 2 ** 40]),
         v2.Tensor("s", "BYTES", [2], [b"caf\xc3\xa9", "x"]),
         v2.Tensor("b", "BOOL", [2], [1, 0], parameters={"note": "hi"})],
        request=req, parameters={"seq": 3}, model_version=2)
    assert type(payload) is bytes
    assert meta == {"content_type": "application/json"}
    assert json.loads(payload) == {
        "model_version": "2", "id": "abc", "parameters": {"seq": 3},
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 2.5, 3.0, -4.0]},
            {"name": "n", "datatype": "INT64", "shape": [3], "data": [1, -2, 2 ** 40]},
            {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["café", "x"]},
            {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False],
             "parameters": {"note": "hi"}}]}
    # Without a request: all JSON, no id (baton fills model_name and id).
    payload, meta = v2.response([v2.Tensor("y", "UINT8", [1], [7])])
    assert json.loads(payload) == {"outputs": [
        {"name": "y", "datatype": "UINT8", "shape": [1], "data": [7]}]}
    assert "v2_header_length" not in meta


def test_json_answer_to_binary_request_overrides_its_header_length():
    # baton merges result meta into request meta: the request's own
    # v2_header_length must not be taken for the all-JSON answer's.
    raw = struct.pack("<f", 1.0)
    req = v2.parse(*body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                      "parameters": {"binary_data_size": 4}}]}, raw))
    payload, meta = v2.response([v2.Tensor("y", "FP32", [1], [2.0])], request=req)
    assert meta == {"content_type": "application/json", "v2_header_length": None}
    assert json.loads(payload)["outputs"][0]["data"] == [2.0]
    payload, meta = v2.response([v2.Tensor("y", "FP32", [1], [2.0])], request=request())
    assert "v2_header_length" not in meta


def test_response_binary_exact_layout():
    req = request(outputs=[{"name": "y", "parameters": {"binary_data": True}},
                           {"name": "z"},
                           {"name": "s", "parameters": {"binary_data": True}},
                           {"name": "b", "parameters": {"binary_data": True}}])
    payload, meta = v2.response(
        [v2.Tensor("y", "FP32", [2], [1.5, -2]),
         v2.Tensor("z", "INT32", [1], [9]),
         v2.Tensor("w", "INT32", [1], [0]),          # not requested: left out
         v2.Tensor("s", "BYTES", [2], [b"\x00\xff", "hé"]),
         v2.Tensor("b", "BOOL", [3], [True, False, True])],
        request=req)
    n = meta["v2_header_length"]
    assert meta["content_type"] == "application/json"
    head = json.loads(payload[:n])
    y_raw = struct.pack("<2f", 1.5, -2.0)
    s_raw = struct.pack("<I", 2) + b"\x00\xff" + struct.pack("<I", 3) + "hé".encode()
    assert head == {"outputs": [
        {"name": "y", "datatype": "FP32", "shape": [2],
         "parameters": {"binary_data_size": 8}},
        {"name": "z", "datatype": "INT32", "shape": [1], "data": [9]},
        {"name": "s", "datatype": "BYTES", "shape": [2],
         "parameters": {"binary_data_size": len(s_raw)}},
        {"name": "b", "datatype": "BOOL", "shape": [3],
         "parameters": {"binary_data_size": 3}}]}
    assert payload[n:] == y_raw + s_raw + b"\x01\x00\x01"
    assert payload[:n].endswith(b"}")


def test_response_binary_every_integer_type_little_endian():
    req = request(parameters={"binary_data_output": True})
    cases = [("UINT16", "<H", 0x0102), ("UINT32", "<I", 0x01020304),
             ("UINT64", "<Q", 0x0102030405060708), ("INT16", "<h", -2),
             ("INT64", "<q", -(2 ** 62)), ("FP64", "<d", 0.1), ("INT8", "<b", -1)]
    payload, meta = v2.response([v2.Tensor(dt, dt, [1], [v]) for dt, _, v in cases],
                                request=req)
    assert payload[meta["v2_header_length"]:] == b"".join(
        struct.pack(fmt, v) for _, fmt, v in cases)


def test_raw_tensor_passes_through_or_decodes_for_json():
    raw = struct.pack("<2f", 0.5, 8.0)
    t = v2.Tensor("y", "FP32", [2], raw=raw)
    payload, meta = v2.response([t], request=request(parameters={"binary_data_output": True}))
    assert payload[meta["v2_header_length"]:] == raw
    payload, meta = v2.response([t], request=request())
    assert json.loads(payload)["outputs"][0]["data"] == [0.5, 8.0]
    with pytest.raises(ValueError):
        v2.response([v2.Tensor("y", "FP32", [3], raw=raw)])


@pytest.mark.parametrize("binary", [False, True])
def test_element_count_mismatch_raises(binary):
    req = request(parameters={"binary_data_output": binary})
    for t in (v2.Tensor("y", "FP32", [2, 2], [1, 2, 3]),
              v2.Tensor("y", "BYTES", [1], [b"a", b"b"]),
              v2.Tensor("y", "INT8", [], [])):
        with pytest.raises(ValueError, match="y"):
            v2.response([t], request=req)
    # A scalar (shape []) holds one element.
    assert v2.response([v2.Tensor("y", "INT8", [], [5])], request=req)


@pytest.mark.parametrize("binary", [False, True])
def test_bad_values_raise(binary):
    req = request(parameters={"binary_data_output": binary})
    for t in (v2.Tensor("y", "UINT8", [1], [256]),
              v2.Tensor("y", "INT8", [1], [-129]),
              v2.Tensor("y", "INT32", [1], [1.5]),
              v2.Tensor("y", "FP32", [1], ["x"]),
              v2.Tensor("y", "BYTES", [1], [3])):
        with pytest.raises(ValueError):
            v2.response([t], request=req)


def test_json_cannot_carry_nan_or_non_utf8_but_binary_can():
    for t in (v2.Tensor("y", "FP32", [1], [math.nan]),
              v2.Tensor("y", "BYTES", [1], [b"\xff\xfe"])):
        with pytest.raises(ValueError, match="binary"):
            v2.response([t], request=request())
        payload, meta = v2.response(
            [t], request=request(outputs=[{"name": "y", "parameters": {"binary_data": True}}]))
        assert meta["v2_header_length"] < len(payload)


def test_tensor_constructor_checks():
    with pytest.raises(ValueError):
        v2.Tensor("y", "FLOAT", [1], [1.0])
    with pytest.raises(TypeError):
        v2.Tensor("y", "BYTES", [1], b"abc")          # a list of one was meant
    with pytest.raises(TypeError):
        v2.Tensor("y", "FP32", [1])                   # neither data nor raw
    with pytest.raises(ValueError):
        v2.Tensor("y", "FP32", [-1], [])
    t = v2.Tensor("y", "fp32", (2,), (1.0, 2.0))
    assert t.datatype == "FP32" and t.shape == [2] and t.data == [1.0, 2.0]
    assert t.raw is None and t.binary is False
    with pytest.raises(TypeError):
        v2.response([{"name": "y"}])
    with pytest.raises(ValueError):
        v2.response([t, t])


def test_round_trip_response_read_back_as_request():
    outputs = [
        v2.Tensor("bool", "BOOL", [2], [True, False]),
        v2.Tensor("u8", "UINT8", [3], [0, 1, 255]),
        v2.Tensor("u64", "UINT64", [1], [2 ** 64 - 1]),
        v2.Tensor("i16", "INT16", [2], [-32768, 32767]),
        v2.Tensor("i32", "INT32", [2, 1], [-5, 5]),
        v2.Tensor("i64", "INT64", [2], [-(2 ** 63), 2 ** 63 - 1]),
        v2.Tensor("f16", "FP16", [2], [0.5, -1024.0]),
        v2.Tensor("bf16", "BF16", [2], [1.5, -0.125]),
        v2.Tensor("f32", "FP32", [1, 3], [0.25, -1.5, 1024.0]),
        v2.Tensor("f64", "FP64", [2], [0.1, -1e-300]),
        v2.Tensor("bytes", "BYTES", [2], [b"one", "twö"]),
    ]
    expected = {t.name: [v.encode() if isinstance(v, str) else v for v in t.data]
                for t in outputs}
    # every other output binary
    asked = [{"name": t.name, "parameters": {"binary_data": i % 2 == 0}}
             for i, t in enumerate(outputs)]
    binary_names = {a["name"] for a in asked if a["parameters"]["binary_data"]}
    payload, meta = v2.response(outputs, request=request(outputs=asked, rid="rt"))
    head, blob = split(payload, meta)
    assert sum(1 for o in head["outputs"] if "data" not in o) == 6
    head["inputs"] = head.pop("outputs")
    again = json.dumps(head).encode()
    req = v2.parse(again + blob, {"v2_header_length": len(again)})
    assert req.id == "rt"
    assert [t.name for t in req.inputs] == [t.name for t in outputs]
    for t, sent in zip(req.inputs, outputs):
        assert t.datatype == sent.datatype and t.shape == sent.shape
        assert t.data == expected[t.name], t.name
        assert t.binary == (sent.name in binary_names)


# --- numpy (optional) and the module itself ---------------------------------

def test_module_does_not_import_numpy():
    out = subprocess.run(
        [PYTHON, "-c", "import sys, baton_worker as bw; "
         "bw.v2.response([bw.v2.Tensor('y', 'FP32', [1], [1.0])]); "
         "print('numpy' in sys.modules)"],
        env=dict(os.environ, PYTHONPATH=SDK_DIR), capture_output=True, text=True,
        timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_numpy_arrays_in_and_out():
    np = pytest.importorskip("numpy")
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = v2.Tensor("y", "FP32", None, a)
    assert t.shape == [2, 3]
    assert t.raw == a.astype("<f4").tobytes()
    assert t.data == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(TypeError):
        v2.Tensor("y", "INT32", None, a)       # float -> int would truncate
    payload, meta = v2.response([t], request=request(parameters={"binary_data_output": True}))
    assert payload[meta["v2_header_length"]:] == t.raw
    raw = struct.pack("<4i", 1, 2, 3, 4)
    req = v2.parse(*body({"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2],
                                      "parameters": {"binary_data_size": 16}}]}, raw))
    x = req.input("x").numpy()
    assert x.shape == (2, 2) and x.dtype == np.dtype("<i4")
    assert x.tolist() == [[1, 2], [3, 4]]
    s = v2.Tensor("s", "BYTES", None, np.array([b"a", b"bc"], dtype=object)).numpy()
    assert s.tolist() == [b"a", b"bc"]
    # BF16 from an ndarray is rounded as the list path rounds it.
    values = [1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, math.nan, 3e38, -1e-40]
    from_np = v2.Tensor("b", "BF16", None, np.array(values, dtype=np.float32))
    req = request(parameters={"binary_data_output": True})
    p1, m1 = v2.response([from_np], request=req)
    p2, m2 = v2.response([v2.Tensor("b", "BF16", [6], values)], request=req)
    assert p1 == p2
    assert struct.unpack("<3H", p1[m1["v2_header_length"]:][:6]) == (0x3F80, 0x3F82, 0xC020)
    back = v2.Tensor("b", "BF16", [6], raw=p1[m1["v2_header_length"]:]).numpy()
    assert back.dtype == np.float32 and back[2] == -2.5 and math.isnan(back[3])


# --- through the SDK's loop -------------------------------------------------

WORKER = r'''
import os, socket, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
import baton_worker as bw

def handle(payload, meta):
    req = bw.v2.parse(payload, meta)
    x = req.input("x")
    return bw.v2.response([bw.v2.Tensor("y", "FP32", x.shape, [v * 2 for v in x.data]),
                           bw.v2.Tensor("n", "INT32", [1], [len(x.data)])],
                          request=req)
bw.run(handle)
'''


def test_handler_returns_response_through_the_sdk(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(WORKER)
    ours, theirs = socket.socketpair()
    ours.settimeout(10)
    env = dict(os.environ, BATON_FD="3", BATON_PROTO="1", PYTHONPATH=SDK_DIR)
    proc = subprocess.Popen([PYTHON, str(script), str(theirs.fileno())],
                            pass_fds=(theirs.fileno(),), env=env,
                            stdin=subprocess.DEVNULL)
    theirs.close()
    try:
        f = ours.makefile("rb")
        assert json.loads(f.readline()) == {"t": "ready", "proto": 1, "fast": 1}
        raw = struct.pack("<3f", 1.0, 2.5, -3.0)
        payload, meta = body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3],
                                          "parameters": {"binary_data_size": 12}}],
                              "outputs": [{"name": "y", "parameters": {"binary_data": True}},
                                          {"name": "n"}]}, raw)
        hdr = {"t": "req", "id": "r1", "len": len(payload), "meta": meta}
        ours.sendall(json.dumps(hdr).encode() + b"\n" + payload)
        res = json.loads(f.readline())
        assert "error" not in res, res
        out = f.read(res["len"])
        n = res["meta"]["v2_header_length"]
        assert res["meta"]["content_type"] == "application/json"
        assert json.loads(out[:n]) == {"outputs": [
            {"name": "y", "datatype": "FP32", "shape": [3],
             "parameters": {"binary_data_size": 12}},
            {"name": "n", "datatype": "INT32", "shape": [1], "data": [3]}]}
        assert out[n:] == struct.pack("<3f", 2.0, 5.0, -6.0)
        # A request the helpers cannot read is rejected, not retried.
        bad = b'{"inputs": 3}'
        ours.sendall(json.dumps({"t": "req", "id": "r2", "len": len(bad),
                                 "meta": {"protocol": "v2"}}).encode() + b"\n" + bad)
        res = json.loads(f.readline())
        assert res["id"] == "r2" and res["retry"] is False and "inputs" in res["error"]
        ours.sendall(b'{"t":"stop"}\n')
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ours.close()
