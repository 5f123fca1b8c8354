#!/usr/bin/python3
"""bench/grpc's worker: a KServe v2 echo through the Python SDK (each input
comes back as output "out_<name>", binary when the request asks for it)."""
import baton_worker as bw


def handle(payload, meta):
    req = bw.v2.parse(payload, meta)
    outs = [bw.v2.Tensor("out_" + t.name, t.datatype, t.shape, raw=t.raw) if t.raw is not None
            else bw.v2.Tensor("out_" + t.name, t.datatype, t.shape, t.data) for t in req.inputs]
    return bw.v2.response(outs, request=req)


bw.run(handle)
