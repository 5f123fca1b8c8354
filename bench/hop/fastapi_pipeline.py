#!/usr/bin/python3
"""bench/hop's comparison: a two-stage pipeline as FastAPI + uvicorn would
run it, one multiprocessing process per stage. POST /pipeline sends the body
through stage 1 and then stage 2 (each an echo in its own process, reached
over a multiprocessing Pipe) and answers with the result.

    fastapi_pipeline.py PORT
"""
import asyncio
import itertools
import multiprocessing
import sys

from fastapi import FastAPI, Request, Response
import uvicorn


def stage(conn):
    """One stage's process: answers (id, payload) with (id, payload)."""
    while True:
        try:
            rid, payload = conn.recv()
        except EOFError:
            return
        conn.send((rid, payload))


class Stage:
    def __init__(self):
        self.conn, child = multiprocessing.Pipe()
        self.proc = multiprocessing.Process(target=stage, args=(child,), daemon=True)
        self.proc.start()
        self.waiting = {}

    def listen(self, loop):
        self.loop = loop
        loop.add_reader(self.conn.fileno(), self.readable)

    def readable(self):
        try:
            while self.conn.poll():
                rid, payload = self.conn.recv()
                self.waiting.pop(rid).set_result(payload)
        except (EOFError, OSError):  # the stage process is gone (shutting down)
            self.loop.remove_reader(self.conn.fileno())

    async def call(self, rid, payload):
        fut = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        self.conn.send((rid, payload))
        return await fut


app = FastAPI()
STAGES = []
ids = itertools.count()


@app.on_event("startup")
async def startup():
    loop = asyncio.get_running_loop()
    for s in STAGES:
        s.listen(loop)


@app.post("/pipeline")
async def pipeline(request: Request):
    body = await request.body()
    rid = next(ids)
    for s in STAGES:
        body = await s.call(rid, body)
    return Response(content=body, media_type="application/octet-stream")


if __name__ == "__main__":
    STAGES.extend([Stage(), Stage()])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)
