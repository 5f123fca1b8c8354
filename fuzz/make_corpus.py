#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/{frame,config,v2}/).

The seeds are checked in; this script is how they were made, so that a
change of format (a new message type, a new config key) can regenerate
them.  Each seed is a small realistic input, valid or broken in one way:

- frame: one byte choosing the read sizes (0 = all at once; the top bit:
  fast headers were offered), then what a worker sends (docs/protocol.md);
- config: YAML from docs/config.md, examples/*/baton.yaml and the e2e tests,
  with paths that resolve under /tmp/fuzz-config (fuzz_config.c's fixtures);
- v2: 4 bytes of Inference-Header-Content-Length (little-endian,
  0xffffffff = none), then the body (docs/protocol-v2.md);
- grpc: a mode byte (even: a call's length-prefixed ModelInferRequests;
  odd: 4 bytes of JSON header length, then a worker's v2 answer), see
  fuzz_grpc.c; the protobuf seeds need python3-grpc-tools.

    python3 fuzz/make_corpus.py
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write(kind, name, data):
    d = os.path.join(HERE, "corpus", kind)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- worker protocol frames -------------------------------------------------

def msg(hdr, payload=b""):
    """One message as the SDKs write it: compact JSON header, then the payload."""
    if payload or "len" in hdr:
        hdr = dict(hdr, len=len(payload))
    return json.dumps(hdr, separators=(",", ":")).encode() + b"\n" + payload


def fast(kind, rid, payload=b"", meta=None, flags=0):
    """One fast frame (docs/protocol.md#fast-headers)."""
    m = json.dumps(meta, separators=(",", ":")).encode() if meta is not None else b""
    r = rid.encode()
    return struct.pack("<BBBBIQ", 0xBA, ord(kind), flags, len(r), len(m), len(payload)) + r \
        + m + payload


def frames():
    req = msg({"t": "req", "id": "r1", "meta": {"pipeline": "p", "stage": "w", "attempt": 1,
                                                "deadline_ms": 5000}}, b"hello")
    blob = bytes(range(256)) + b"\n\n\x00\r\n"
    seeds = {
        "ready": (0, msg({"t": "ready", "proto": 1})),
        "req-split-3": (3, req),
        "req-bytewise": (1, req),
        "batch-of-2": (1, msg({"t": "batch", "n": 2}) +
                       msg({"t": "req", "id": "r2", "meta": {"stage": "w"}}, b"one") +
                       msg({"t": "req", "id": "r3", "meta": {"stage": "w"}}, b"two\n")),
        "res-binary-payload": (7, msg({"t": "res", "id": "r4",
                                       "meta": {"content_type": "image/png"}}, blob)),
        "res-error": (0, msg({"t": "res", "id": "r5", "error": "bad input", "retry": False})),
        "res-retry": (5, msg({"t": "res", "id": "r6", "error": "busy", "retry": True})),
        "ping-pong-stop": (2, msg({"t": "ping", "seq": 7}) + msg({"t": "pong", "seq": 7}) +
                           msg({"t": "stop"})),
        "session": (13, msg({"t": "ready", "proto": 1}) + req +
                    msg({"t": "res", "id": "r1", "meta": {"v2_header_length": 12}},
                        b'{"outputs":[]}\x00\x00\x80?') + msg({"t": "pong", "seq": 1})),
        "v2-meta-reals-unicode": (0, msg({"t": "res", "id": "\u00e9\u4e2d\U0001f600",
                                          "meta": {"score": 0.1, "big": 1e300, "neg": -0.0,
                                                   "max": 9223372036854775807,
                                                   "esc": "a\\\"\t\u0001/"}}, b"x")),
        "payload-cut-short": (4, msg({"t": "res", "id": "r7"}, b"0123456789")[:-4]),
        "req-memfd": (0, msg({"t": "req", "id": "r8", "memfd": 6220800, "meta": {}})),
        "ready-memfd-res-memfd": (2, msg({"t": "ready", "proto": 1, "memfd": True}) +
                                  msg({"t": "res", "id": "r9", "memfd": 0})),
        "bad-memfd-and-len": (0, b'{"t":"res","id":"r1","len":3,"memfd":3}\nabc'),
        "bad-memfd-negative": (0, b'{"t":"res","id":"r1","memfd":-1}\n'),
        "bad-memfd-over-limit": (0, b'{"t":"res","id":"r1","memfd":4294967296}\n'),
        "bad-not-json": (0, b"this is not json\n"),
        "bad-no-type": (0, b'{"id":"r1","len":0}\n'),
        "bad-len-over-limit": (0, b'{"t":"res","id":"r1","len":4294967296}\n'),
        "bad-len-negative": (0, b'{"t":"res","id":"r1","len":-1}\n'),
        "bad-len-real": (0, b'{"t":"res","id":"r1","len":1.5}\n'),
        "bad-empty-line": (9, msg({"t": "ping", "seq": 1}) + b"\n"),
        "bad-duplicate-key": (0, b'{"t":"res","t":"req"}\n'),
        "bad-header-array": (0, b'["t","ready"]\n'),
        # Fast headers: the top bit of the first byte says they were offered.
        "fast-res": (0x80, fast("r", "r1", b"hello", {"content_type": "text/plain"})),
        "fast-mixed-bytewise": (0x81, fast("r", "r1", b"a\nb") + msg({"t": "pong", "seq": 1}) +
                                fast("e", "r2", b"busy", flags=1) + fast("r", "r3")),
        "fast-batch-split": (0x85, msg({"t": "batch", "n": 2}) +
                             fast("q", "r2", b"one", {"stage": "w"}) + fast("q", "r3", b"two")),
        "fast-bad-kind": (0x80, fast("x", "r1", b"x")),
        "fast-bad-meta": (0x80, fast("r", "r1", b"x", [1, 2])),
        "fast-unoffered": (0, fast("r", "r1", b"x")),
        # The input read as a fast meta (bt_frame_meta_load against json_loadb).
        "meta-flat": (0, b'{"content_type":"application/json","v2_header_length":123}'),
        "meta-flat-literals": (0, b' { "a" : -17 , "b":true,"c":false,"d":null,"":"" } '),
        "meta-flat-edges": (0, b'{"n":999999999999999999,"z":-0,"l":01,"r":1.5,"a":1,"a":2}'),
        # The 64 KiB header limit is left to the unit tests and to -max_len:
        # a 64 KiB seed makes every mutation that long and fuzzing 3x slower.
    }
    for name, (chunk, data) in seeds.items():
        write("frame", name, bytes([chunk]) + data)


# --- configuration files ----------------------------------------------------

def configs():
    # Verbatim: their commands do not resolve here, which is an error path too.
    for ex in ("echo", "documents"):
        with open(os.path.join(ROOT, "examples", ex, "baton.yaml"), "rb") as f:
            write("config", "example-" + ex, f.read())

    seeds = {
        # docs/config.md's stage, with paths that exist under /tmp/fuzz-config.
        "docs-stage": """listen: 127.0.0.1:8080
log_level: info
max_request_bytes: 67108864
max_payload_bytes: 268435456
gpus: auto
interval_ms: 1000
stages:
  detect:
    command: [python3, workers/detect.py, --model, yolo.pt]
    workdir: w
    venv: envs/detect
    env: {OMP_NUM_THREADS: "1"}
    replicas: {initial: 2}         # or just: replicas: 2
    max_ongoing: 1
    queue_max: 1024
    timeout_ms: 60000
    retries: 1
    start_timeout_ms: 120000
    warmup: {payload_file: warmup.json, required: false}
    restart: {backoff_ms: 2000, backoff_max_ms: 60000, max_failures: 5,
              reset_after_ms: 60000, retry_failed_after_ms: 0}
    stop: {grace_ms: 5000}
    ping_interval_ms: 5000
    ping_timeout_ms: 10000
    batch: {max_size: 8, window_ms: 20}
    priority_levels: 1
  ocr:
    command: [worker, --lang, eng]
pipelines:
  documents: [detect, ocr]          # short form
  receipts:                         # long form
    stages: [detect, ocr]
    max_inflight: 256
""",
        "autoscale-gpus": """interval_ms: 200
gpus:
  - {id: 0, memory_mb: 8192}
  - {id: 1, memory_mb: 16384}
stages:
  w:
    command: [/bin/true]
    replicas: {min: 1, max: 4, initial: 1}
    autoscale: {policy: demand, target_ongoing: 2, upscale_delay_s: 5, downscale_delay_s: 30}
    resources: {gpu: 0.5, gpu_memory_mb: 2048, memory_mb: 512}
  h:
    command: [/bin/true]
    replicas: {min: 1, max: 3}
    autoscale: {policy: headroom, up_gpu: 85, up_cpu: 80, up_latency_s: 5,
                down_gpu: 95, down_cpu: 90, down_latency_s: 2.5, hysteresis_s: 30,
                max_cpu: 90, max_gpu: 95}
pipelines:
  p: [w, h]
""",
        "spawn-files": """stages:
  legacy:
    mode: spawn
    command: [python3, seed000_script.py, --input, '{input}', --output, '{output}']
    spawn: {status_key: status, output_ext: .json}
    replicas: 2
    retries: 1
    timeout_ms: 30000
pipelines:
  p: [legacy]
""",
        "spawn-stdin": """stages:
  gpu:
    mode: spawn
    command: [/usr/bin/python3, seed003_script.py]
pipelines:
  p: [gpu]
""",
        "v2-io": """stages:
  w:
    command: [/usr/bin/python3, fake_worker.py]
    env: {"PYTHONPATH": "/tmp/fuzz-config/sdk"}
    max_ongoing: 1
    priority_levels: 3
pipelines:
  m:
    stages: [w]
    io:
      inputs: [{name: x, datatype: FP32, shape: [-1, 3]}]
      outputs: [{name: out_x, datatype: FP32, shape: [-1, 3], parameters: {binary_data: true}}]
  detector:
    stages: [w]
    io:
      inputs:  [{name: image, datatype: UINT8, shape: [-1, -1, 3]}]
      outputs: [{name: boxes, datatype: BYTES, shape: [-1, 4]}]
""",
        "env-setup": """stages:
  model:
    command: [python3, -c, "import bt_probe"]
    venv: envs/detect
    setup: {requirements: requirements.txt, wheels: wheels, python: /usr/bin/python3}
    health_check: [python3, -c, "import bt_probe; print(bt_probe.VALUE)"]
  vision:
    command: [python3, -c, "pass"]
    venv: envs/vision
    setup: {system_site_packages: true}
    health_check: [python3, -c, "import cv2"]
  plain:
    command: [/bin/true]
pipelines:
  p: [model]
""",
        "auth-http-user": """listen: "[::1]:0"
log_level: debug
auth: {token_file: token}
http: {max_connections: 100, idle_timeout_s: 30}
stages:
  w:
    command: [bin/worker]
    user: root
    group: root
    env: {PATH: /usr/bin, HOME: /root}
pipelines:
  p: [w]
""",
        "anchors": """stages:
  a: &stage
    command: [/bin/true]
    timeout_ms: 5000
  b: *stage
pipelines:
  p: [a, b]
  m:
    stages: [a]
    io:
      inputs: [{name: x, datatype: BYTES, shape: [1], parameters: &a {binary_data: true, dims: [1, 2]}}]
      outputs: [{name: y, datatype: BOOL, shape: [1], parameters: *a}]
""",
        # tests/e2e/test_config.py's broken files, one each.
        "bad-unknown-stage-key": """stages:
  w:
    command: [/usr/bin/python3, fake_worker.py]
    env: {PYTHONPATH: /tmp/sdk}
    replica: 2
pipelines: {p: [w]}
""",
        "bad-duplicate-key": """stages:
  w:
    command: [/bin/true]
    retries: 1
    retries: 2
pipelines: {p: [w]}
""",
        "bad-yaml-syntax": """stages:
  w:
    command: [/bin/true]
pipelines: {p: [w]
""",
        "bad-listen": """listen: localhost
stages:
  w:
    command: [./data.txt]
    workdir: w
pipelines: {p: [w]}
""",
        "bad-spawn-batch": """stages:
  s:
    mode: spawn
    command: [/bin/true, '{input}']
    batch: {max_size: 4}
pipelines:
  p: [s]
""",
        "bad-two-documents": """stages:
  w: {command: [/bin/true]}
pipelines: {p: [w]}
---
stages: {}
""",
    }
    # Regression seeds: inputs the fuzzer and a code review found crashing or
    # hanging the loader before commit 0cf59b2 (fuzz/crashes/README.md).
    io_params = ("stages:\n  a: {command: [/bin/true]}\npipelines:\n  m:\n    stages: [a]\n"
                 "    io:\n      inputs: [{name: x, datatype: BOOL, shape: [1], parameters: %s}]\n")
    seeds["regress-recursive-alias"] = io_params % "&p {x: *p}"
    seeds["regress-nonscalar-key"] = io_params % "{[]: 1}"
    bomb = ['&l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 7):
        bomb.append("&l%d [%s]" % (i, ",".join(["*l%d" % (i - 1)] * 10)))
    seeds["regress-alias-bomb"] = io_params % ("{%s}" % ", ".join(
        "l%d: %s" % (i, b) for i, b in enumerate(bomb)))
    seeds["regress-relative-path-entry"] = ("stages:\n  a: {command: [worker], env: {PATH: bin}}\n"
                                            "pipelines:\n  m: [a]\n")
    for name, text in seeds.items():
        write("config", name, text)


# --- KServe v2 requests -----------------------------------------------------

NO_HEADER = 0xFFFFFFFF


def v2(name, doc, binary=b"", header_len=None):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    if header_len is None:
        header_len = len(body) if binary else NO_HEADER
    write("v2", name, struct.pack("<I", header_len) + body + binary)


def bytes_elems(*items):
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def requests():
    x = {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}
    v2("json-fp32", {"id": "req-7", "inputs": [x]})
    v2("json-params-outputs", {"id": "r", "inputs": [x],
                               "parameters": {"timeout": 100000, "priority": 2,
                                              "binary_data_output": True},
                               "outputs": [{"name": "out_x",
                                            "parameters": {"binary_data": True}}]})
    v2("json-mixed-types", {"inputs": [
        {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        {"name": "s", "datatype": "BYTES", "shape": [1, 2], "data": ["hello", ""]},
        {"name": "u", "datatype": "UINT64", "shape": [1], "data": [9223372036854775807]},
        {"name": "i", "datatype": "INT8", "shape": [], "data": -128},
        {"name": "h", "datatype": "FP16", "shape": [0], "data": []}]})
    blob = struct.pack("<3f", 1, 2, 3)
    v2("binary-fp32", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                   "parameters": {"binary_data_size": len(blob)}}],
                       "outputs": [{"name": "out_x", "parameters": {"binary_data": True}}]},
       blob)
    sb = bytes_elems(b"abc", b"", b"\x00\xff")
    v2("binary-bytes", {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [3],
                                    "parameters": {"binary_data_size": len(sb)}}]}, sb)
    v2("binary-mixed", {"inputs": [
        {"name": "a", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}},
        {"name": "j", "datatype": "INT16", "shape": [1], "data": [7]},
        {"name": "c", "datatype": "UINT8", "shape": [3], "parameters": {"binary_data_size": 3}}],
        "parameters": {"binary_data_output": True}}, struct.pack("<2i", -1, 2) + b"\x01\x02\x03")
    v2("bad-binary-size", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                       "parameters": {"binary_data_size": 8}}]}, blob[:8])
    # 0xfffffffb: the body's length + 1 (see header_len_of in fuzz_v2.c).
    v2("bad-header-past-body", {"inputs": [x]}, b"\x00" * 4, header_len=0xFFFFFFFB)
    v2("bad-shape-count", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                                       "data": [1, 2, 3, 4, 5]}]})
    v2("bad-duplicate-input", {"inputs": [x, x]})
    v2("bad-range", {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1],
                                 "data": [256]}]})
    v2("bad-duplicate-key", b'{"inputs":[],"inputs":[]}')
    v2("bad-not-json", b'{"inputs": [')
    # What a worker answers (the target also completes each body as an answer).
    v2("answer-json", {"outputs": [{"name": "out_x", "datatype": "FP32", "shape": [1],
                                    "data": [0.1]}]})
    ans = json.dumps({"model_name": "m", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [3],
         "parameters": {"binary_data_size": 12}}]}).encode() + b" \n"
    v2("answer-binary", ans, blob, header_len=len(ans))
    v2("answer-empty-object", b"{ }\r\n")


def grpc_seeds():
    import struct
    import subprocess
    import sys
    import tempfile
    tmp = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + os.path.join(ROOT, "src", "grpc"),
                    "--python_out=" + tmp, os.path.join(ROOT, "src", "grpc", "inference.proto")],
                   check=True)
    sys.path.insert(0, tmp)
    import inference_pb2 as pb

    def framed(*msgs, flag=0):
        return b"".join(bytes([flag]) + struct.pack(">I", len(m)) + m for m in msgs)

    raw = pb.ModelInferRequest(model_name="m", id="r1")
    raw.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    raw.raw_input_contents.append(struct.pack("<6f", 1, 2, 3, 4, 5, 6))
    raw.parameters["priority"].int64_param = 1
    raw.parameters["timeout"].int64_param = 200000
    typed = pb.ModelInferRequest(model_name="m")
    t = typed.inputs.add(name="i", datatype="INT8", shape=[3])
    t.contents.int_contents.extend([1, -2, 127])
    t = typed.inputs.add(name="s", datatype="BYTES", shape=[2])
    t.contents.bytes_contents.extend([b"ab", b""])
    t = typed.inputs.add(name="b", datatype="BOOL", shape=[1])
    t.contents.bool_contents.append(True)
    typed.outputs.add(name="o").parameters["binary_data"].bool_param = False
    bad = pb.ModelInferRequest(model_name="m")
    bad.inputs.add(name="x", datatype="FP32", shape=[2])
    bad.raw_input_contents.extend([b"1234", b"5678"])
    seeds = {
        "raw-fp32": b"\x00" + b"5S" + framed(raw.SerializeToString()),
        "typed-three": b"\x02" + b"100m" + framed(typed.SerializeToString()),
        "two-messages": b"\x04" + framed(raw.SerializeToString(), typed.SerializeToString()),
        "raw-count-mismatch": b"\x00" + framed(bad.SerializeToString()),
        "compressed": b"\x00" + framed(raw.SerializeToString(), flag=1),
        "not-protobuf": b"\x00" + framed(b"\xff\xff\xff"),
        "cut-short": b"\x00" + framed(raw.SerializeToString())[:-3],
    }
    hdr = b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}'
    seeds["answer-binary"] = b"\x01" + struct.pack("<I", len(hdr)) + hdr + struct.pack("<2f", 1, 2)
    js = b'{"id":"a","parameters":{"served":3},"outputs":[{"name":"y","datatype":"INT16","shape":[2],"data":[[1],[-2]]},{"name":"s","datatype":"BYTES","shape":[1],"data":["hi"]}]}'
    seeds["answer-json"] = b"\x03" + b"\xff\xff\xff\xff" + js
    seeds["answer-not-v2"] = b"\x01" + b"\xff\xff\xff\xff" + b"hello"
    for name, data in seeds.items():
        write("grpc", name, data)

# --- the shared-memory extension -----------------------------------------------


def shm(name, body, infer=False, header_len=None, memfd=False):
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    sel = (1 if infer else 0) | (2 if memfd else 0)
    head = bytes([sel])
    if infer:
        head += struct.pack("<I", NO_HEADER if header_len is None else header_len)
    write("shm", name, head + body)


def shm_seeds():
    def inp(region, size, offset=None, **extra):
        p = {"shared_memory_region": region, "shared_memory_byte_size": size}
        if offset is not None:
            p["shared_memory_offset"] = offset
        return dict({"name": "x", "datatype": "UINT8", "shape": [size], "parameters": p},
                    **extra)
    out = {"name": "y", "parameters": {"shared_memory_region": "b",
                                       "shared_memory_byte_size": 16}}
    shm("register", {"key": "/baton-fuzz-none", "offset": 0, "byte_size": 64})
    shm("register-bad-key", {"key": "/a/b", "byte_size": 64})
    shm("register-not-json", b'{"key": ')
    shm("infer-region-a", {"inputs": [inp("a", 1024)], "outputs": [out]}, infer=True)
    shm("infer-region-b-offset", {"inputs": [inp("b", 16, 8176)]}, infer=True, memfd=True)
    shm("infer-out-of-bounds", {"inputs": [inp("a", 1, 1024)]}, infer=True)
    shm("infer-unknown", {"inputs": [inp("zz", 4)]}, infer=True)
    shm("infer-half", {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [4],
                                   "parameters": {"shared_memory_region": "a"}}]}, infer=True)
    mixed = json.dumps({"inputs": [
        {"name": "j", "datatype": "UINT8", "shape": [4], "parameters": {"binary_data_size": 4}},
        inp("a", 8)]}).encode()
    shm("infer-mixed-binary", mixed + b"", infer=True, header_len=len(mixed))


if __name__ == "__main__":
    frames()
    configs()
    requests()
    grpc_seeds()
    shm_seeds()
