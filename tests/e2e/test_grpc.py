"""The KServe v2 gRPC ingress (inference.GRPCInferenceService), with grpcio
and stubs generated here from baton's own .proto: every RPC, the worker
seeing what an HTTP client would send, auth, status codes, timeouts, a
crash mid-request, the bidirectional stream, and abusive HTTP/2 peers
written frame by frame where grpcio cannot misbehave."""
import os
import signal
import re
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from conftest import BATON, ROOT, SLOW, Gate, fake_stage, free_port, wait_for

grpc = pytest.importorskip("grpc")

IO = ("    io:\n"
      "      inputs: [{name: x, datatype: FP32, shape: [-1, 3]}]\n"
      "      outputs: [{name: out_x, datatype: FP32, shape: [-1, 3]}]\n")


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """inference_pb2 and inference_pb2_grpc, generated from src/grpc/inference.proto."""
    out = str(tmp_path_factory.mktemp("stubs"))
    subprocess.run(["/usr/bin/python3", "-m", "grpc_tools.protoc",
                    "-I" + os.path.join(ROOT, "src", "grpc"), "--python_out=" + out,
                    "--grpc_python_out=" + out,
                    os.path.join(ROOT, "src", "grpc", "inference.proto")], check=True)
    sys.path.insert(0, out)
    try:
        import inference_pb2
        import inference_pb2_grpc
    finally:
        sys.path.remove(out)
    return inference_pb2, inference_pb2_grpc


def grpc_config(top="", pipeline_extra=IO, **stage):
    port = free_port()
    text = (top + "grpc:\n  listen: 127.0.0.1:%d\n" % port + "stages:\n" + fake_stage("w", **stage) +
            "pipelines:\n  m:\n    stages: [w]\n" + pipeline_extra)
    return text, port


class Client:
    def __init__(self, pb, port):
        self.pb, self.pbg = pb
        self.channel = grpc.insecure_channel("127.0.0.1:%d" % port,
                                             options=[("grpc.enable_http_proxy", 0)])
        self.stub = self.pbg.GRPCInferenceServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def request(self, model="m", id="", inputs=(), **params):
        """inputs: (name, datatype, shape, raw bytes or a list for typed contents)."""
        q = self.pb.ModelInferRequest(model_name=model, id=id)
        for k, v in params.items():
            p = q.parameters[k]
            if isinstance(v, bool):
                p.bool_param = v
            elif isinstance(v, int):
                p.int64_param = v
            else:
                p.string_param = v
        raw = [i for i in inputs if isinstance(i[3], bytes)]
        for name, dt, shape, data in inputs:
            t = q.inputs.add(name=name, datatype=dt, shape=shape)
            if isinstance(data, bytes):
                q.raw_input_contents.append(data)
            elif dt == "BYTES":
                t.contents.bytes_contents.extend(data)
            elif dt == "FP32":
                t.contents.fp32_contents.extend(data)
            else:
                t.contents.int_contents.extend(data)
        assert not raw or len(raw) == len(inputs)
        return q

    def infer(self, *a, metadata=None, timeout=None, **kw):
        return self.stub.ModelInfer(self.request(*a, **kw), metadata=metadata,
                                    timeout=timeout)


def fp32(*v):
    return struct.pack("<%df" % len(v), *v)


def code_of(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def grpc_calls(b):
    """baton_grpc_calls_total from /metrics: {(method, code): n}."""
    text = b.get("/metrics").body.decode()
    return {(m, c): int(n) for m, c, n in
            re.findall(r'baton_grpc_calls_total\{method="(\w+)",code="(\w+)"\} (\d+)', text)}


def test_grpc_health_and_metadata_rpcs(baton, pb):
    cfg, port = grpc_config()
    b = baton(cfg)
    c = Client(pb, port)
    P = c.pb
    assert c.stub.ServerLive(P.ServerLiveRequest()).live is True
    assert c.stub.ServerReady(P.ServerReadyRequest()).ready is True
    meta = c.stub.ServerMetadata(P.ServerMetadataRequest())
    assert meta.name == "baton" and re.match(r"\d+\.\d+\.\d+", meta.version)
    m = c.stub.ModelMetadata(P.ModelMetadataRequest(name="m"))
    assert (m.name, list(m.versions), m.platform) == ("m", ["1"], "baton")
    assert [(t.name, t.datatype, list(t.shape)) for t in m.inputs] == [("x", "FP32", [-1, 3])]
    assert [t.name for t in m.outputs] == ["out_x"]
    assert c.stub.ModelReady(P.ModelReadyRequest(name="m")).ready is True
    assert c.stub.ModelReady(P.ModelReadyRequest(name="m", version="1")).ready is True
    code, details = code_of(lambda: c.stub.ModelReady(P.ModelReadyRequest(name="nope")))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in details
    code, _ = code_of(lambda: c.stub.ModelMetadata(P.ModelMetadataRequest(name="m", version="2")))
    assert code == grpc.StatusCode.NOT_FOUND
    # A method baton does not serve.
    other = c.channel.unary_unary("/inference.GRPCInferenceService/RepositoryIndex")
    code, _ = code_of(lambda: other(b""))
    assert code == grpc.StatusCode.UNIMPLEMENTED
    c.close()
    assert b.stop() == 0


def test_grpc_model_infer_is_the_http_request(baton, pb):
    cfg, port = grpc_config()
    b = baton(cfg)
    c = Client(pb, port)
    # Raw tensors: the worker sees binary tensors, answers binary, all back raw.
    r = c.infer(id="r1", inputs=[("x", "FP32", [2, 3], fp32(1, 2, 3, 4, 5, 6))])
    assert (r.model_name, r.model_version, r.id) == ("m", "1", "r1")
    assert [(o.name, o.datatype, list(o.shape)) for o in r.outputs] == [("out_x", "FP32", [2, 3])]
    assert struct.unpack("<6f", r.raw_output_contents[0]) == (1, 2, 3, 4, 5, 6)
    assert r.parameters["served"].int64_param == 1  # the worker's parameters come along
    # Typed contents (INT32, BYTES) take the same path.
    r = c.infer(inputs=[("x", "INT32", [3], [7, -8, 9]), ("s", "BYTES", [2], [b"ab", b""])])
    outs = {o.name: i for i, o in enumerate(r.outputs)}
    assert struct.unpack("<3i", r.raw_output_contents[outs["out_x"]]) == (7, -8, 9)
    assert r.raw_output_contents[outs["out_s"]] == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
    # An answer bigger than what one write takes (256 KiB) comes back whole.
    big = bytes(range(256)) * 2400
    r = c.infer(inputs=[("x", "UINT8", [len(big)], big)], timeout=60 * SLOW)
    assert r.raw_output_contents[0] == big
    # The same tensor over HTTP's binary extension gives the same bytes.
    hdr = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2,3],"parameters":{"binary_data_size":24}}],"parameters":{"binary_data_output":true}}'
    h = b.request("POST", "/v2/models/m/infer", hdr + fp32(1, 2, 3, 4, 5, 6),
                  {"Inference-Header-Content-Length": str(len(hdr))})
    assert h.status == 200 and h.body.endswith(fp32(1, 2, 3, 4, 5, 6)), h
    c.close()
    assert b.stop() == 0


def test_grpc_errors_map_to_status_codes(baton, pb, tmp_path):
    cfg, port = grpc_config(max_ongoing=1, queue_max=1)
    b = baton(cfg)
    c = Client(pb, port)
    C = grpc.StatusCode
    # The v2 checks of the HTTP path: 6 elements announced, 5 sent.
    code, details = code_of(lambda: c.infer(inputs=[("x", "FP32", [2, 3], fp32(1, 2, 3, 4, 5))]))
    assert code == C.INVALID_ARGUMENT and "x" in details, details
    code, details = code_of(lambda: c.infer(model="nope", inputs=[("x", "FP32", [1], fp32(1))]))
    assert code == C.NOT_FOUND and "nope" in details
    # A NUL makes a bad name, not a shorter one ("m\0x" is not model "m").
    code, details = code_of(lambda: c.infer(model="m\x00x", inputs=[("x", "FP32", [1], fp32(1))]))
    assert code == C.INVALID_ARGUMENT and "NUL" in details, details
    code, _ = code_of(lambda: c.stub.ModelReady(c.pb.ModelReadyRequest(name="m\x00x")))
    assert code == C.INVALID_ARGUMENT
    code, details = code_of(lambda: c.infer(inputs=[("x", "FP32", [1], fp32(1))],
                                            raw_answer="not v2"))
    assert code == C.INTERNAL and "worker_error" in details
    code, details = code_of(lambda: c.infer(inputs=[("x", "FP32", [1], fp32(1))],
                                            fake="reject:no thanks"))
    assert code == C.INVALID_ARGUMENT and "no thanks" in details
    raw = c.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    code, details = code_of(lambda: raw(b"\xff\xff"))
    assert code == C.INVALID_ARGUMENT and "ModelInferRequest" in details, details
    # A queue that is full: UNAVAILABLE, as Triton.
    with Gate(tmp_path) as gate:
        held = [c.stub.ModelInfer.future(c.request(inputs=[("x", "FP32", [1], fp32(1))],
                                                   fake=gate.payload))]
        wait_for(lambda: b.status()["stages"]["w"]["running"] == 1, 10)
        held.append(c.stub.ModelInfer.future(c.request(inputs=[("x", "FP32", [1], fp32(2))])))
        wait_for(lambda: b.status()["stages"]["w"]["queued"] == 1, 10)
        code, details = code_of(lambda: c.infer(inputs=[("x", "FP32", [1], fp32(3))]))
        assert code == C.UNAVAILABLE and "overloaded" in details, details
    assert [struct.unpack("<f", f.result(30).raw_output_contents[0])[0] for f in held] == [1, 2]
    counts = grpc_calls(b)
    assert counts[("ModelInfer", "NOT_FOUND")] == 1 and counts[("ModelInfer", "UNAVAILABLE")] == 1
    assert counts[("ModelInfer", "OK")] == 2 and counts[("ModelInfer", "INTERNAL")] == 1
    c.close()
    assert b.stop() == 0


def test_grpc_needs_the_bearer_token(baton, pb, tmp_path):
    token = "grpc-secret-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    cfg, port = grpc_config(top="auth: {token_file: token}\n")
    b = baton(cfg, start=False)
    b.token = token
    b.start()
    c = Client(pb, port)
    P = c.pb
    one = dict(inputs=[("x", "FP32", [1], fp32(1))])
    code, _ = code_of(lambda: c.infer(**one))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: c.infer(metadata=[("authorization", "Bearer " + token + "x")], **one))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: c.stub.ModelMetadata(P.ModelMetadataRequest(name="m")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    r = c.infer(metadata=[("authorization", "bearer  " + token)], **one)
    assert struct.unpack("<f", r.raw_output_contents[0]) == (1,)
    # The health probes need no token, as over HTTP.
    assert c.stub.ServerLive(P.ServerLiveRequest()).live
    assert c.stub.ServerReady(P.ServerReadyRequest()).ready
    c.close()
    assert b.stop() == 0


def test_grpc_worker_crash_mid_request_gets_exactly_one_answer(baton, pb):
    cfg, port = grpc_config(replicas=2)
    b = baton(cfg)
    c = Client(pb, port)
    code, details = code_of(lambda: c.infer(inputs=[("x", "FP32", [1], fp32(1))], fake="crash"))
    assert code == grpc.StatusCode.INTERNAL and "worker_crashed" in details, details
    # On a stream: one answer per request, the crashed one as error_message with its id.
    reqs = [c.request(id="a", inputs=[("x", "FP32", [1], fp32(1))]),
            c.request(id="boom", inputs=[("x", "FP32", [1], fp32(2))], fake="crash"),
            c.request(id="b", inputs=[("x", "FP32", [1], fp32(3))])]
    answers = list(c.stub.ModelStreamInfer(iter(reqs), timeout=60 * SLOW))
    by_id = {}
    for a in answers:
        by_id.setdefault(a.infer_response.id, []).append(a)
    assert sorted(by_id) == ["a", "b", "boom"] and len(answers) == 3, answers
    assert "worker_crashed" in by_id["boom"][0].error_message
    assert by_id["a"][0].error_message == "" and by_id["b"][0].infer_response.raw_output_contents
    wait_for(b.all_replicas_ready, 30)
    c.close()
    assert b.stop() == 0


def test_grpc_timeouts_expire_in_the_queue(baton, pb, tmp_path):
    cfg, port = grpc_config(max_ongoing=1)
    b = baton(cfg)
    c = Client(pb, port)
    one = dict(inputs=[("x", "FP32", [1], fp32(1))])
    with Gate(tmp_path) as gate:
        busy = c.stub.ModelInfer.future(c.request(fake=gate.payload, **one))
        wait_for(lambda: b.status()["stages"]["w"]["running"] == 1, 10)
        # parameters.timeout, in µs as over HTTP: answered by baton at the deadline.
        code, details = code_of(lambda: c.stub.ModelInfer(_with_timeout(c, one, 200000)))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "timeout" in details, details
        assert grpc_calls(b)[("ModelInfer", "DEADLINE_EXCEEDED")] == 1
        # grpc-timeout: the client gives up, and baton drops the queued request at
        # that deadline too, while the replica is still held.
        code, _ = code_of(lambda: c.infer(timeout=0.3, **one))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: b.status()["stages"]["w"]["queued"] == 0, 10,
                 what="the request to leave the queue at its grpc-timeout")
        assert b.status()["stages"]["w"]["running"] == 1
    assert busy.result(30).raw_output_contents
    # Where nobody gives up, the grpc-timeout still reaches the worker as what
    # is left of it (deadline_ms), not the stage's timeout_ms: the queue
    # deadline above could also be the client's reset cancelling its call.
    r = c.stub.ModelInfer(c.request(echo_deadline=True, **one), timeout=5 * SLOW)
    assert 0 < r.parameters["deadline_ms"].int64_param <= 6000 * SLOW, r.parameters
    c.close()
    assert b.stop() == 0


def _with_timeout(c, one, us):
    q = c.request(**one)
    q.parameters["timeout"].int64_param = us
    return q


def test_grpc_priority_parameter_orders_the_queue(baton, pb, tmp_path):
    cfg, port = grpc_config(max_ongoing=1, priority_levels=2)
    b = baton(cfg)
    c = Client(pb, port)
    one = dict(inputs=[("x", "FP32", [1], fp32(1))])
    with Gate(tmp_path) as gate:
        busy = c.stub.ModelInfer.future(c.request(fake=gate.payload, **one))
        wait_for(lambda: b.status()["stages"]["w"]["running"] == 1, 10)
        futures = {}
        for tag, prio in [("low", 2), ("high", 1)]:
            futures[tag] = c.stub.ModelInfer.future(c.request(priority=prio, **one))
            wait_for(lambda n=len(futures): b.status()["stages"]["w"]["queued"] == n, 10)
    busy.result(30)
    served = {t: f.result(30).parameters["served"].int64_param for t, f in futures.items()}
    assert served["high"] < served["low"], served
    c.close()
    assert b.stop() == 0


def test_grpc_stream_answers_in_completion_order_with_ids(baton, pb):
    cfg, port = grpc_config(replicas=2)
    b = baton(cfg)
    c = Client(pb, port)
    reqs = [c.request(id="slow", inputs=[("x", "FP32", [1], fp32(1))], fake="slow:1500"),
            c.request(id="bad", model="nope", inputs=[("x", "FP32", [1], fp32(1))])]
    reqs += [c.request(id="f%d" % i, inputs=[("x", "FP32", [1], fp32(i))]) for i in range(4)]
    answers = list(c.stub.ModelStreamInfer(iter(reqs), timeout=60 * SLOW))
    ids = [a.infer_response.id for a in answers]
    assert sorted(ids) == sorted(["bad", "slow", "f0", "f1", "f2", "f3"]), ids  # each with its id
    assert ids[-1] == "slow", ids  # the slow one finished last, so came last
    bad = [a for a in answers if a.error_message]
    assert len(bad) == 1 and "nope" in bad[0].error_message
    for a in answers:
        if a.infer_response.id.startswith("f"):
            assert struct.unpack("<f", a.infer_response.raw_output_contents[0])[0] == \
                int(a.infer_response.id[1:])
    counts = grpc_calls(b)
    assert counts[("ModelStreamInfer", "OK")] == 5 and counts[("ModelStreamInfer", "NOT_FOUND")] == 1
    c.close()
    assert b.stop() == 0


# ---- abusive peers, frame by frame --------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def hpack_int(n, prefix_bits, first=0):
    top = (1 << prefix_bits) - 1
    if n < top:
        return bytes([first | n])
    out = [first | top]
    n -= top
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    return bytes(out + [n])


def headers_block(pairs):
    """Literal header fields without indexing, no Huffman: always valid HPACK."""
    out = b""
    for k, v in pairs:
        out += b"\x00" + hpack_int(len(k), 7) + k + hpack_int(len(v), 7) + v
    return out


def grpc_message(message):
    """A serialized message with gRPC's 5-byte prefix (uncompressed, its length)."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def call_headers(method, extra=()):
    """The HPACK block that opens a call of the inference service."""
    return headers_block([(b":method", b"POST"), (b":scheme", b"http"),
                          (b":path", b"/inference.GRPCInferenceService/" + method),
                          (b":authority", b"x"), (b"content-type", b"application/grpc"),
                          (b"te", b"trailers")] + list(extra))


def stream_answers(pb, frames, stream):
    """The ModelStreamInferResponses in the DATA frames of one stream."""
    data = b"".join(p for t, fl, st, p in frames if t == 0 and st == stream)
    answers = []
    while data:
        n = struct.unpack(">I", data[1:5])[0]
        answers.append(pb[0].ModelStreamInferResponse.FromString(data[5:5 + n]))
        data = data[5 + n:]
    return answers


def grpc_call_frames(stream, method, message, extra=()):
    hdrs = call_headers(method, extra)
    body = grpc_message(message)
    out = frame(1, 0x4, stream, hdrs)
    for i in range(0, len(body), 16384):
        last = i + 16384 >= len(body)
        out += frame(0, 0x1 if last else 0, stream, body[i:i + 16384])
    return out


def read_frames(s, until, timeout):
    """Reads frames until until(type, flags, stream, payload) is true or EOF; returns
    (frames, eof)."""
    s.settimeout(timeout)
    buf, frames = b"", []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            f = (buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff, buf[9:9 + n])
            buf = buf[9 + n:]
            frames.append(f)
            if until(*f):
                return frames, False
        try:
            data = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return frames, True
        if not data:
            return frames, True
        buf += data
    return frames, False


def closed_within(s, timeout):
    """True when the peer closes the connection within timeout (data is drained)."""
    frames, eof = read_frames(s, lambda *f: False, timeout)
    return eof


def test_grpc_stream_messages_split_anyhow_across_data_frames(baton, pb):
    """gRPC messages need not line up with DATA frames: a frame that ends one
    message and begins the next, or holds a message's middle, loses nothing;
    each request is answered once, with its id and its own output."""
    cfg, port = grpc_config()
    b = baton(cfg)
    c = Client(pb, port)
    msgs = [c.request(id="m%d" % i, inputs=[("x", "FP32", [1], fp32(i))]).SerializeToString()
            for i in range(3)]
    body = b"".join(grpc_message(m) for m in msgs)
    first, second = 5 + len(msgs[0]), 5 + len(msgs[1])
    # Message 0 and 3 bytes of 1; the rest of 1 and 7 bytes of 2; the rest of 2.
    cuts = [0, first + 3, first + second + 7, len(body)]
    hdrs = call_headers(b"ModelStreamInfer")
    data = b"".join(frame(0, 0x1 if i == 2 else 0, 1, body[cuts[i]:cuts[i + 1]]) for i in range(3))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(PREFACE + frame(4, 0, 0) + frame(1, 0x4, 1, hdrs) + data)
    # Until the call's trailers (HEADERS with END_STREAM on stream 1).
    frames, eof = read_frames(s, lambda t, fl, st, p: t == 1 and st == 1 and fl & 0x1, 30 * SLOW)
    s.close()
    assert frames and frames[-1][0] == 1 and frames[-1][2] == 1, (eof, frames)
    answers = stream_answers(pb, frames, 1)
    assert sorted(a.infer_response.id for a in answers) == ["m0", "m1", "m2"], answers
    for a in answers:
        assert not a.error_message, a.error_message
        assert struct.unpack("<f", a.infer_response.raw_output_contents[0])[0] == \
            int(a.infer_response.id[1:])
    c.close()
    assert b.stop() == 0


def test_grpc_abusive_peers_are_bounded(baton, pb):
    cfg, port = grpc_config(top="max_request_bytes: 65536\n", pipeline_extra="")
    cfg = cfg.replace("  listen:", "  max_connections: 3\n  max_streams: 4\n  listen:")
    b = baton(cfg)
    c = Client(pb, port)
    P = c.pb
    # A message over max_request_bytes: RESOURCE_EXHAUSTED, refused by its announced length.
    code, details = code_of(lambda: c.infer(inputs=[("x", "UINT8", [100000], bytes(100000))]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_request_bytes" in details
    # A frame longer than the 16 KiB HTTP/2 allows without SETTINGS: GOAWAY FRAME_SIZE_ERROR.
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(PREFACE + frame(4, 0, 0) + frame(0, 0, 1, b"\x00" * 20000))
    frames, _ = read_frames(s, lambda t, *r: t == 7, 10)
    goaway = [f for f in frames if f[0] == 7]
    assert goaway and struct.unpack(">I", goaway[0][3][4:8])[0] == 6, frames  # FRAME_SIZE_ERROR
    assert closed_within(s, 10)
    s.close()
    # A SETTINGS flood from a peer that does not read: cut, not queued.
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(PREFACE + frame(4, 0, 0) * 2000)
    assert closed_within(s, 10)
    s.close()
    # Request headers over 32 KiB: that stream is reset, the connection lives on.
    s = socket.create_connection(("127.0.0.1", port))
    big = headers_block([(b":method", b"POST"), (b":path", b"/inference.GRPCInferenceService/ServerLive"),
                         (b":scheme", b"http"), (b"x-pad", b"p" * 40000)])
    s.sendall(PREFACE + frame(4, 0, 0) + frame(1, 0, 1, big[:16000]) + frame(9, 0, 1, big[16000:32000]) +
              frame(9, 0x4, 1, big[32000:]))
    frames, _ = read_frames(s, lambda t, fl, st, p: t == 3 and st == 1, 10)
    assert any(f[0] == 3 and f[2] == 1 for f in frames), frames
    s.close()
    # max_streams (4) calls open on one connection, the SETTINGS acknowledged: a
    # fifth breaks the protocol, and the connection ends (GOAWAY PROTOCOL_ERROR).
    s = socket.create_connection(("127.0.0.1", port))
    opened = b"".join(frame(1, 0x4, sid, headers_block([
        (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x"),
        (b":path", b"/inference.GRPCInferenceService/ModelStreamInfer"),
        (b"content-type", b"application/grpc")])) for sid in (1, 3, 5, 7, 9))
    s.sendall(PREFACE + frame(4, 0, 0) + frame(4, 0x1, 0) + opened)
    frames, _ = read_frames(s, lambda t, fl, st, p: t == 7, 10)
    goaway = [f for f in frames if f[0] == 7]
    assert goaway and struct.unpack(">I", goaway[0][3][4:8])[0] == 1, frames
    assert b"max concurrent streams" in goaway[0][3]
    assert closed_within(s, 10)
    s.close()
    # An endless stream: past max_streams requests in flight on it, it ends RESOURCE_EXHAUSTED.
    gate = b.dir / "gate"
    reqs = [c.request(id=str(i), inputs=[("x", "FP32", [1], fp32(i))], fake="gate:%s" % gate)
            for i in range(6)]
    code, details = code_of(lambda: list(c.stub.ModelStreamInfer(iter(reqs), timeout=60 * SLOW)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "in flight" in details, details
    gate.write_text("")
    # max_connections (3, the client's own included): the next one is closed at once.
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    wait_for(lambda: "baton_grpc_connections 3\n" in b.get("/metrics").body.decode(), 10)
    extra = socket.create_connection(("127.0.0.1", port))
    assert closed_within(extra, 10)
    for h in held + [extra]:
        h.close()
    # And baton serves on.
    wait_for(lambda: "baton_grpc_connections 1\n" in b.get("/metrics").body.decode(), 10)
    assert c.stub.ServerLive(P.ServerLiveRequest()).live
    c.close()
    assert b.stop() == 0


def test_grpc_client_that_never_reads_is_dropped(baton, pb):
    cfg, port = grpc_config(top="http: {write_timeout_s: 1, idle_timeout_s: 2}\n",
                            pipeline_extra="")
    b = baton(cfg)
    c = Client(pb, port)
    # A 1 MiB answer to a peer that neither reads nor opens its flow-control window.
    q = c.request(inputs=[("x", "UINT8", [1 << 20], bytes(1 << 20))]).SerializeToString()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(PREFACE + frame(4, 0, 0) + grpc_call_frames(1, b"ModelInfer", q))
    wait_for(lambda: "did not take its answers in time" in b.log(), 30 * SLOW,
             what="the slow reader to be dropped\n" + b.log_tail())
    wait_for(lambda: "baton_grpc_connections 0\n" in b.get("/metrics").body.decode(), 10)
    assert closed_within(s, 10)
    s.close()
    # A call whose client stops halfway through its message: the connection
    # is idle, and closed after idle_timeout_s with GOAWAY.
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(PREFACE + frame(4, 0, 0) + grpc_call_frames(1, b"ModelInfer", q)[:30000])
    frames, eof = read_frames(s, lambda t, *r: t == 7, 30)
    assert any(f[0] == 7 for f in frames), frames
    assert closed_within(s, 10)
    s.close()
    # The others are served meanwhile and after.
    r = c.infer(inputs=[("x", "FP32", [1], fp32(5))])
    assert struct.unpack("<f", r.raw_output_contents[0]) == (5,)
    c.close()
    assert b.stop() == 0


def test_grpc_drain_answers_what_runs_and_idle_streams_do_not_hold_it(baton, pb, tmp_path):
    cfg, port = grpc_config()
    b = baton(cfg)
    c = Client(pb, port)
    one = dict(inputs=[("x", "FP32", [1], fp32(7))])
    # A stream left open with nothing in flight, and a request running.
    idle_requests = threading.Event()

    def idle():
        yield c.request(id="first", **one)
        idle_requests.wait(60)

    stream = c.stub.ModelStreamInfer(idle(), timeout=60 * SLOW)
    assert next(stream).infer_response.id == "first"
    with Gate(tmp_path) as gate:
        running = c.stub.ModelInfer.future(c.request(fake=gate.payload, **one))
        wait_for(lambda: b.status()["stages"]["w"]["running"] == 1, 10)
        b.remember_groups_quietly()
        b.remember_children()
        b.send_signal(signal.SIGTERM)
        wait_for(lambda: "shutting down" in b.log(), 10)
        # Draining: new requests are refused, the running one goes on.
        code, _ = code_of(lambda: c.infer(**one))
        assert code == grpc.StatusCode.UNAVAILABLE
    # The running request is answered, then baton stops although the stream is open.
    assert struct.unpack("<f", running.result(30).raw_output_contents[0]) == (7,)
    assert b.stop() == 0
    idle_requests.set()
    c.close()


GRPC_BAD = [
    ("bad_listen", "grpc:\n  listen: somewhere\n", 2, 11, "'grpc.listen'"),
    ("unknown_key", "grpc:\n  listen: 127.0.0.1:1\n  listn: 2\n", 3, 3, "listn"),
    ("zero_streams", "grpc:\n  listen: 127.0.0.1:1\n  max_streams: 0\n", 3, 16, "grpc.max_streams"),
    ("no_listen", "grpc:\n  max_connections: 5\n", 2, 3, "'grpc' needs 'listen'"),
]


@pytest.mark.parametrize("name,text,line,col,needle", GRPC_BAD, ids=[b[0] for b in GRPC_BAD])
def test_grpc_config_errors_name_line_and_key(tmp_path, name, text, line, col, needle):
    path = tmp_path / "baton.yaml"
    path.write_text(text + "stages:\n" + fake_stage("w") + "pipelines: {p: [w]}\n")
    out = subprocess.run([BATON, "check", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, (out.stdout, out.stderr)
    first = out.stderr.strip().splitlines()[0]
    assert first.startswith("%s:%d:%d: " % (path, line, col)) and needle in first, first


def test_grpc_check_prints_the_grpc_address(tmp_path):
    path = tmp_path / "baton.yaml"
    path.write_text("grpc:\n  listen: 127.0.0.1:8001\n  max_streams: 7\nstages:\n" + fake_stage("w") +
                    "pipelines: {p: [w]}\n")
    out = subprocess.run([BATON, "check", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "grpc:    127.0.0.1:8001 (max_connections 1000, max_streams 7)" in out.stdout, out.stdout


def test_grpc_big_answer_reaches_a_client_that_only_reads(baton, pb):
    # A peer with wide flow-control windows sends nothing while its answer
    # comes: baton must send the whole answer without being prompted.
    cfg, port = grpc_config(pipeline_extra="")
    b = baton(cfg)
    c = Client(pb, port)
    big = bytes(range(256)) * 2400
    q = c.request(inputs=[("x", "UINT8", [len(big)], big)]).SerializeToString()
    s = socket.create_connection(("127.0.0.1", port))
    wide = struct.pack(">HI", 4, (1 << 24))  # SETTINGS_INITIAL_WINDOW_SIZE
    s.sendall(PREFACE + frame(4, 0, 0, wide) + frame(8, 0, 0, struct.pack(">I", 1 << 24)) +
              frame(4, 0x1, 0) + grpc_call_frames(1, b"ModelInfer", q))
    frames, eof = read_frames(s, lambda t, fl, st, p: t == 1 and st == 1 and fl & 0x1, 30)
    got = sum(len(f[3]) for f in frames if f[0] == 0 and f[2] == 1)
    assert got > len(big) and not eof, (got, [f[:3] for f in frames][-5:])
    s.close()
    c.close()
    assert b.stop() == 0
