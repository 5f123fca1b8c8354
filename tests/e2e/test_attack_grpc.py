"""Hostile gRPC clients found by a black-box attack: messages small on the
wire that unpack into far more memory than they weigh (an empty tensor is
two bytes of protobuf and hundreds of bytes once unpacked and turned into
JSON) are refused by their field count before protobuf-c unpacks them; a
stream's refused requests are answered with their ids; a worker's answer
of countless outputs is refused within bounds; messages cut at any byte, on
streams interleaved on one connection, are each answered once; an error
message cut inside a character still reaches the client as UTF-8."""
import socket
import struct

import pytest

from conftest import SLOW, free_port, status_kib  # noqa: F401  (conftest's fixtures: baton)
from test_grpc import (PREFACE, Client, call_headers, code_of, fp32, frame,  # noqa: F401
                       grpc_config, grpc_message, pb, read_frames,  # (pb: a fixture)
                       stream_answers)

grpc = pytest.importorskip("grpc")


def test_grpc_request_of_countless_empty_fields_is_refused_before_unpacking(baton, pb):
    cfg, port = grpc_config()
    b = baton(cfg)
    c = Client(pb, port)
    P = c.pb
    # 70,000 empty output tensors: 140 KB on the wire (about 30 MB once
    # unpacked and translated; 2 MB of them once took 950 MB).
    q = c.request(inputs=[("x", "FP32", [1, 3], fp32(1, 2, 3))])
    for _ in range(70000):
        q.outputs.add()
    code, details = code_of(lambda: c.stub.ModelInfer(q, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "at most 65536" in details, details
    # Unknown fields count too, in the small RPCs' messages as well.
    junk = b"\xa0\x06\x00" * 70000  # field 100, varint 0
    code, details = code_of(lambda: c.channel.unary_unary(
        "/inference.GRPCInferenceService/ModelMetadata")(junk, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    # An honest request of many dimensions and parameters is served.
    many = c.request(inputs=[("x", "FP32", [1] * 62 + [1, 3], fp32(7, 8, 9))],
                     **{"p%d" % i: i for i in range(200)})
    res = c.stub.ModelInfer(many, timeout=30)
    assert res.raw_output_contents[0] == fp32(7, 8, 9)
    assert c.stub.ServerLive(P.ServerLiveRequest()).live
    c.close()
    assert b.stop() == 0


def test_grpc_stream_refusals_carry_the_request_id(baton, pb):
    cfg, port = grpc_config()
    b = baton(cfg)
    c = Client(pb, port)
    # Too many fields in a packed shape (one byte a dimension), on a stream: an error
    # answer with the request's id, and the stream goes on to serve the next
    # request.  Every refused request of a stream is answered with its id
    # (they came back with none, so a client could not tell which had failed).
    big = c.request(id="big", inputs=[("x", "FP32", [0] * 70000, b"")])
    short = c.request(id="short", inputs=[("x", "FP32", [1, 3], b"12")])
    lost = c.request(model="nosuch", id="lost")
    ok = c.request(id="ok", inputs=[("x", "FP32", [1, 3], fp32(4, 5, 6))])
    answers = list(c.stub.ModelStreamInfer(iter([big, short, lost, ok]), timeout=30))
    by_id = {a.infer_response.id: a for a in answers}
    assert len(answers) == 4 and set(by_id) == {"big", "short", "lost", "ok"}, answers
    assert by_id["big"].error_message.startswith("bad_request: "), answers
    assert "at most 65536" in by_id["big"].error_message, answers
    assert "takes 12 bytes" in by_id["short"].error_message, answers
    assert "unknown model 'nosuch'" in by_id["lost"].error_message, answers
    assert by_id["lost"].infer_response.model_name == "nosuch"
    assert not by_id["ok"].error_message
    assert by_id["ok"].infer_response.raw_output_contents[0] == fp32(4, 5, 6)
    c.close()
    assert b.stop() == 0


def test_grpc_calls_reset_while_queued_leave_the_queue_and_never_run(baton, pb, tmp_path):
    # Open a call, send a request, reset the call, again and again: without
    # cancellation one connection filled the queue with work nobody would
    # read, and honest requests waited behind it until their deadlines.
    from conftest import Gate, wait_for
    cfg, port = grpc_config(max_ongoing=1)
    b = baton(cfg)
    c = Client(pb, port)
    one = dict(inputs=[("x", "FP32", [1], fp32(1))])
    with Gate(tmp_path) as gate:
        busy = c.stub.ModelInfer.future(c.request(fake=gate.payload, **one))
        wait_for(lambda: b.status()["stages"]["w"]["running"] == 1, 30)
        gone = [c.stub.ModelInfer.future(c.request(**one)) for _ in range(6)]
        wait_for(lambda: b.status()["stages"]["w"]["queued"] == 6, 30, what="6 queued")
        for f in gone:
            f.cancel()
        wait_for(lambda: b.status()["stages"]["w"]["queued"] == 0, 30,
                 what="the reset calls' requests to leave the queue")
        st = b.status()
        assert st["stages"]["w"]["running"] == 1, st["stages"]["w"]
        assert st["pipelines"]["m"]["failures"].get("cancelled") == 6, st["pipelines"]["m"]
        r = st["requests"]
        assert r["accepted"] == r["succeeded"] + r["failed"] + r["in_flight"], r
    assert busy.result(30).raw_output_contents
    # The worker ran the held request and nothing of the reset ones.
    wait_for(lambda: b.status()["stages"]["w"]["completed"] == 1, 30)
    assert c.stub.ModelInfer(c.request(**one), timeout=30).raw_output_contents
    assert b.status()["stages"]["w"]["completed"] == 2
    metrics = b.get("/metrics").body.decode()
    assert 'code="cancelled"} 6' in metrics, [l for l in metrics.splitlines() if "cancel" in l]
    c.close()
    assert b.stop() == 0


def test_grpc_answer_of_countless_outputs_is_refused_within_bounds(baton, pb, tmp_path):
    # A worker's answer of millions of empty outputs ("{}", 3 bytes each):
    # what the conversion keeps of each output once took 68 times the text
    # (1.7 GB for 25 MB).  Past 65,536 outputs, dimensions and parameters,
    # as in a request, the answer is refused and nothing more is kept.
    import os
    cfg, port = grpc_config()
    b = baton(cfg)
    c = Client(pb, port)
    n = 3 << 20
    path = tmp_path / "answer.json"
    path.write_bytes(b'{"outputs":[' + b"{}," * (n - 1) + b"{}]}")
    size = os.path.getsize(path)
    factor = 16 if os.environ.get("BATON_SANITIZED") else 8
    before = status_kib(b.proc.pid, "VmRSS")
    code, details = code_of(lambda: c.infer(inputs=[("x", "FP32", [1], fp32(1))],
                                            raw_answer_file=str(path), timeout=120))
    grew = (status_kib(b.proc.pid, "VmHWM") - before) * 1024
    assert code == grpc.StatusCode.INTERNAL, details
    assert ("worker_error: the pipeline's last stage did not answer a v2 response: the answer "
            "has %d outputs, shape dimensions and parameters; at most 65536 are taken" % n
            in details), details
    assert grew < factor * size, "baton grew by %d bytes for a %d-byte answer" % (grew, size)
    # An empty answer is refused with the JSON parser's sentence ("wrong
    # arguments", jansson's word for a NULL text, said nothing).
    code, details = code_of(lambda: c.infer(inputs=[("x", "FP32", [1], fp32(1))],
                                            raw_answer=""))
    assert code == grpc.StatusCode.INTERNAL, details
    assert details.endswith("the answer is not a JSON object: '[' or '{' expected near end "
                            "of file"), details
    assert c.infer(inputs=[("x", "FP32", [1], fp32(5))]).raw_output_contents[0] == fp32(5)
    c.close()
    assert b.stop() == 0


def test_grpc_messages_cut_at_every_byte_on_interleaved_streams_are_each_answered_once(baton, pb):
    # Two requests on a ModelStreamInfer call, its DATA cut in two at every
    # byte (an empty frame included), one call per cut, all on one
    # connection with their frames interleaved; and one call fed a byte per
    # frame among them.  A call's bytes wait in its own buffer, never
    # another's, and nghttp2's chunk is decoded in place only when its call
    # holds nothing.
    cfg, port = grpc_config(replicas=2)
    b = baton(cfg)
    c = Client(pb, port)
    body = b""
    for i in (1, 2):
        m = c.request(id="%d" % i, inputs=[("x", "FP32", [1], fp32(i))]).SerializeToString()
        body += grpc_message(m)
    hdrs = call_headers(b"ModelStreamInfer")
    wide = frame(4, 0, 0, struct.pack(">HI", 4, 1 << 24)) + frame(8, 0, 0, struct.pack(">I", 1 << 24))
    cuts = list(range(len(body) + 1))
    for start in range(0, len(cuts), 48):
        streams = {1 + 2 * k: [body[:p], body[p:]] for k, p in enumerate(cuts[start:start + 48])}
        if start == 0:
            streams[99] = [body[i:i + 1] for i in range(len(body))]
        out = PREFACE + wide + b"".join(frame(1, 0x4, sid, hdrs) for sid in streams)
        for n in range(max(len(p) for p in streams.values())):
            out += b"".join(frame(0, 0x1 if n == len(p) - 1 else 0, sid, p[n])
                            for sid, p in streams.items() if n < len(p))
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(out)
        ended = set()

        def all_ended(t, fl, st, p):
            if t == 1 and fl & 0x1:  # trailers
                ended.add(st)
            return ended == set(streams)
        frames, eof = read_frames(s, all_ended, 60 * SLOW)
        s.close()
        assert ended == set(streams) and not eof, (sorted(set(streams) - ended), frames[-3:])
        assert not [f for f in frames if f[0] in (3, 7)], "reset or GOAWAY: %r" % frames
        for sid in streams:
            got = sorted((a.infer_response.id, a.error_message,
                          a.infer_response.raw_output_contents[0])
                         for a in stream_answers(pb, frames, sid))
            assert got == [("1", "", fp32(1)), ("2", "", fp32(2))], (sid, got)
    c.close()
    assert b.stop() == 0


def test_grpc_error_messages_cut_inside_a_character_stay_utf8(baton, pb):
    # A worker's long reason cut at the stream answer's 600 bytes, a model
    # name cut by the sentence's %.100s, a request whose id is not UTF-8: a
    # protobuf string that is not UTF-8 made the client give up the whole
    # stream ("Exception deserializing response!"), losing the answers after.
    cfg, port = grpc_config()
    b = baton(cfg)
    c = Client(pb, port)
    P = c.pb
    one = dict(inputs=[("x", "FP32", [1], fp32(1))])
    reqs = [c.request(id="rej", fake="reject:" + "\u00e9" * 400, **one).SerializeToString(),
            c.request(id="nf", model="a" + "\u00e9" * 60, **one).SerializeToString(),
            b"\x0a\x01m\x1a\x02\xffx",  # model_name "m", id "\xffx"
            c.request(id="ok", **one).SerializeToString()]
    call = c.channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                   response_deserializer=P.ModelStreamInferResponse.FromString)
    by_id = {a.infer_response.id: a for a in call(iter(reqs), timeout=30)}
    assert sorted(by_id) == ["?x", "nf", "ok", "rej"], by_id
    assert by_id["rej"].error_message.startswith("rejected: " + "\u00e9" * 200), by_id["rej"]
    assert "unknown model 'a" + "\u00e9" * 49 in by_id["nf"].error_message, by_id["nf"]
    assert "the request id is not UTF-8" in by_id["?x"].error_message, by_id["?x"]
    assert by_id["ok"].infer_response.raw_output_contents[0] == fp32(1)
    # The status message of a unary call too (grpc-message: UTF-8, then
    # percent-encoded); a cut character turned all of it into mojibake.
    code, details = code_of(lambda: c.infer(fake="reject:" + "\u00e9" * 400, **one))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("rejected: " + "\u00e9" * 100), details
    c.close()
    assert b.stop() == 0
