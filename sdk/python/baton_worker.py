"""baton_worker: run a Python function as a baton stage worker (protocol v1).

This single file, standard library only, is the whole Python SDK: copy it next to
your model. It speaks the worker protocol on the socket baton hands over as fd 3
and keeps stdout and stderr free for your own printing. It does not parse
configuration, spawn anything or retry: baton does all of that.

Example (workers/upper.py, run by baton with `command: [python3, workers/upper.py]`):

    import baton_worker as bw

    def init():                        # optional; runs once, before "ready"
        return load_model("upper.bin") # anything non-None is passed on as `state`

    def handle(payload, meta, state):  # (payload, meta) when init returns None
        if not payload:
            raise bw.Reject("empty input")            # bad input: not retried
        return {"text": state.run(payload.decode())}  # dict -> JSON reply

    bw.run(handle, init=init)

Handlers
    handle(payload: bytes, meta: dict[, state]) for one request at a time, or a
    batch handler, marked with @bw.batch_handler or run(..., batch=True):
    handle_batch(requests: list[bw.Request][, state]) -> list of results in the
    same order. A batch handler receives every batch baton sends in one call (a
    lone request arrives as a list of one); a single-item handler is called once
    per request of a batch. `meta` always holds pipeline, stage, attempt and
    deadline_ms plus what the client and earlier stages added.

Results (what a handler returns, per request)
    bytes / bytearray / memoryview   the reply payload, as is
    str                              encoded as UTF-8
    dict or list                     JSON-encoded; meta content_type is set to
                                     application/json unless you give one
    None                             an empty reply (a sink stage)
    (body, meta_dict)                any body above, plus metadata merged into
                                     the request's metadata for the next stage
    an exception instance            batch handlers only: fails that item alone

Failures
    raise bw.Reject("why")   the input is bad: not retried (HTTP 422 downstream)
    raise bw.Retry("why")    transient: baton may try again
    any other Exception      transient as well; the message becomes
                             "TypeName: message" and the traceback goes to stderr
    An exception from a batch handler fails every request of the batch.
    An exception from init() is printed and the process exits 1 (never "ready").

Life cycle: run() never returns. It exits 0 on "stop" (after answering what it
has received) and when baton closes the socket, and 2 on a protocol violation
or when started outside baton. SIGTERM keeps its default action. Exiting goes
through SystemExit, so `finally` blocks and atexit handlers run, but a
non-daemon thread left running will keep the process alive until baton's
grace period ends and it sends SIGTERM.

Helpers: bw.log(*args) prints to stderr and flushes; bw.stage() and
bw.replica() tell where this process runs (None outside baton). Python buffers
stdout when it is a pipe, as under baton: print(..., flush=True) or bw.log()
for lines that should reach baton's log at once.
"""

import json
import os
import socket
import sys
import time
import traceback
from json.encoder import encode_basestring_ascii as _quote_ascii

__all__ = ["run", "batch_handler", "Request", "Reject", "Retry",
           "log", "stage", "replica", "PROTO"]

PROTO = 1
__version__ = "1.0"

_MAX_HEADER = 64 * 1024        # protocol limit on a header line, "\n" included
_BUF_SIZE = 1024 * 1024        # receive buffer; larger messages get their own
_FLUSH_BYTES = 256 * 1024      # pending output that is written without waiting
_FLUSH_AGE = 0.001             # seconds an answer may wait to share a write
_MAX_ERROR_CHARS = 4000        # keeps an error header far below _MAX_HEADER


def _reject_constant(name):
    raise ValueError("%s is not JSON" % name)


# A decoder and encoders of our own: json.loads/json.dumps re-check their
# arguments on every call, which costs more than parsing a small header.
# NaN and Infinity are refused both ways: they are not JSON, and baton and
# downstream clients parse strictly.
_decode = json.JSONDecoder(parse_constant=_reject_constant).decode
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_encode_body = json.JSONEncoder(separators=(",", ":"), allow_nan=False,
                                ensure_ascii=False).encode

_now = time.monotonic
_READY = b'{"t":"ready","proto":1}\n'


class Reject(Exception):
    """The input is bad for this model; baton does not retry (HTTP 422)."""


class Retry(Exception):
    """A transient failure; baton may send the request again."""


class Request:
    """One request of a batch, as handed to a batch handler."""

    __slots__ = ("id", "payload", "meta")

    def __init__(self, id, payload, meta):
        self.id = id              # baton's request id, opaque
        self.payload = payload    # bytes
        self.meta = meta          # dict

    def __repr__(self):
        # The payload may be megabytes of binary: show its size, not its bytes.
        return "Request(id=%r, payload=<%d bytes>, meta=%r)" % (
            self.id, len(self.payload), self.meta)


def batch_handler(fn):
    """Mark fn as a batch handler so that run(fn) passes it lists of Request."""
    fn.baton_batch = True
    return fn


def log(*args):
    """print() to stderr and flush at once, so the line reaches baton's log now."""
    print(*args, file=sys.stderr, flush=True)


def stage():
    """Name of the stage this worker serves, or None outside baton."""
    return os.environ.get("BATON_STAGE")


def replica():
    """Index of this replica within its stage, or None outside baton."""
    value = os.environ.get("BATON_REPLICA")
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def run(handler, init=None, batch=None):
    """Serve requests with handler until baton says stop; never returns.

    init, if given, is called without arguments before "ready" is sent; a
    non-None return value is passed to every handler call as a last argument.
    batch=None means: a batch handler if handler was marked @batch_handler.
    """
    if not callable(handler):
        raise TypeError("baton_worker.run: handler must be callable")
    if batch is None:
        batch = getattr(handler, "baton_batch", False)
    # Check the environment before init(): loading a model only to find out
    # there is nobody to serve wastes minutes.
    sock = _open_socket()
    state = None
    if init is not None:
        try:
            state = init()
        except Exception:
            _print_error("init() failed; not serving")
            raise SystemExit(1)
    _Worker(sock, handler, bool(batch), state).serve()


def _open_socket():
    fd_text = os.environ.get("BATON_FD")
    if not fd_text:
        sys.stderr.write("%s: this is a baton worker; run it under `baton serve`\n"
                         % (sys.argv[0] or "baton_worker"))
        raise SystemExit(2)
    proto = os.environ.get("BATON_PROTO", str(PROTO))
    if proto != str(PROTO):
        sys.stderr.write("baton_worker: baton speaks protocol %s, this SDK speaks %d\n"
                         % (proto, PROTO))
        raise SystemExit(2)
    try:
        fd = int(fd_text)
        # Programs this worker starts (os.system, C libraries that fork) must not
        # inherit the socket: a copy held open elsewhere would hide our death
        # from baton, which waits for EOF.
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(True)
    except (ValueError, OSError) as e:
        sys.stderr.write("baton_worker: cannot use BATON_FD=%s: %s\n" % (fd_text, e))
        raise SystemExit(2)
    return sock


def _print_error(what):
    """Print the exception being handled with a line saying what failed."""
    sys.stderr.write("baton_worker: %s\n" % what)
    traceback.print_exc(file=sys.stderr)
    sys.stderr.flush()


def _json_id(rid):
    # Ids come from baton's header, so they are strings in practice; other JSON
    # values are echoed as well, at the price of the general encoder.
    if type(rid) is str:
        return _quote_ascii(rid).encode()
    return _encode(rid).encode()


def _failure(exc):
    """Map an exception to (error text, retry flag) as the protocol wants them."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not take the worker down
        text = ""
    if not isinstance(exc, (Reject, Retry)):
        text = "%s: %s" % (name, text) if text else name
    elif not text:
        text = name
    if len(text) > _MAX_ERROR_CHARS:
        text = text[:_MAX_ERROR_CHARS] + "..."
    return text, not isinstance(exc, Reject)


class _Worker:
    """The connection to baton: a receive buffer, pending output, dispatch."""

    def __init__(self, sock, handler, batch, state):
        self.sock = sock
        self.handler = handler
        self.batch = batch
        self.extra = () if state is None else (state,)
        self.buf = bytearray(_BUF_SIZE)
        self.view = memoryview(self.buf)
        self.start = 0            # first unparsed byte in buf
        self.end = 0              # one past the last received byte in buf
        self.out = []             # frames not yet written
        self.out_size = 0
        self.out_since = 0.0      # when work on the oldest pending frame began
        self.warned_types = set()

    # --- the loop -----------------------------------------------------------

    def serve(self):
        self.write(_READY)
        read = self.read_message
        while True:
            hdr, payload = read()
            t = hdr.get("t")
            if t == "req":
                rid = self.request_id(hdr)
                meta = self.request_meta(hdr)
                if self.batch:
                    self.handle_batch([Request(rid, payload, meta)])
                else:
                    self.handle_one(rid, payload, meta)
            elif t == "batch":
                self.read_batch(hdr)
            elif t == "ping":
                self.queue(b'{"t":"pong","seq":%b}\n' % _encode(hdr.get("seq")).encode(),
                           _now())
            elif t == "stop":
                self.flush()
                raise SystemExit(0)
            else:
                self.unknown(hdr)

    def read_batch(self, hdr):
        n = hdr.get("n")
        if type(n) is not int or n < 0:
            self.violation("batch header without a valid n", hdr)
        reqs = []
        while len(reqs) < n:
            h, payload = self.read_message()
            t = h.get("t")
            if t == "req":
                reqs.append(Request(self.request_id(h), payload, self.request_meta(h)))
            elif t == "ping":
                self.queue(b'{"t":"pong","seq":%b}\n' % _encode(h.get("seq")).encode(),
                           _now())
            else:
                self.violation("batch of %d ended after %d requests" % (n, len(reqs)), h)
        if not reqs:
            return
        if self.batch:
            self.handle_batch(reqs)
        else:
            for r in reqs:
                self.handle_one(r.id, r.payload, r.meta)

    # --- handlers -----------------------------------------------------------

    def handle_one(self, rid, payload, meta):
        began = _now()
        try:
            frames = self.success(rid, self.handler(payload, meta, *self.extra))
        except Exception as e:
            frames = self.failure(rid, e)
        self.queue(frames, began)

    def handle_batch(self, reqs):
        began = _now()
        try:
            results = self.handler(reqs, *self.extra)
            if type(results) is not list:
                results = list(results)
            if len(results) != len(reqs):
                raise TypeError("batch handler returned %d results for %d requests"
                                % (len(results), len(reqs)))
        except Exception as e:
            # One traceback for the whole batch, not one per request.
            if not isinstance(e, (Reject, Retry)):
                _print_error("batch of %d requests failed" % len(reqs))
            self.queue([self.failure(r.id, e, log=False) for r in reqs], began)
            return
        # Queued together: the answers of one batch share a write even when the
        # batch took long enough for each to be flushed on its own.
        parts = []
        for r, result in zip(reqs, results):
            if isinstance(result, BaseException):
                frames = self.failure(r.id, result)
            else:
                try:
                    frames = self.success(r.id, result)
                except Exception as e:
                    frames = self.failure(r.id, e)
            if type(frames) is tuple:
                parts.extend(frames)
            else:
                parts.append(frames)
        self.queue(parts, began)

    def success(self, rid, result):
        """Frames answering rid with result; raises TypeError/ValueError on a bad result."""
        meta = None
        if type(result) is tuple:
            if len(result) != 2:
                raise TypeError("handler returned a tuple of %d; expected (body, meta)"
                                % len(result))
            result, meta = result
            if meta is not None and not isinstance(meta, dict):
                raise TypeError("result meta must be a dict, not %s" % type(meta).__name__)
        if type(result) is bytes:
            body = result
        elif isinstance(result, str):
            body = result.encode()
        elif isinstance(result, (dict, list)):
            body = _encode_body(result).encode()
            meta = {"content_type": "application/json", **(meta or {})}
        elif result is None:
            body = b""
        elif isinstance(result, (bytes, bytearray, memoryview)):
            # Copied because the answer may be written later, after the handler
            # has reused its buffer.
            body = bytes(result)
        else:
            raise TypeError("handler returned %s; expected bytes, str, dict, list, "
                            "None or (body, meta)" % type(result).__name__)
        if meta:
            head = _encode({"t": "res", "id": rid, "len": len(body), "meta": meta})
            if len(head) >= _MAX_HEADER:
                raise ValueError("result meta is %d bytes encoded; the header limit is %d"
                                 % (len(head), _MAX_HEADER))
            head = head.encode() + b"\n"
        else:
            head = b'{"t":"res","id":%b,"len":%d}\n' % (_json_id(rid), len(body))
        if not body:
            return head
        if len(body) < 4096:
            return head + body
        return (head, body)

    def failure(self, rid, exc, log=True):
        """Frame failing rid with exc; prints the traceback of an unexpected exc."""
        text, retry = _failure(exc)
        if log and not isinstance(exc, (Reject, Retry)):
            sys.stderr.write("baton_worker: request %s failed\n" % _encode(rid))
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            sys.stderr.flush()
        return (_encode({"t": "res", "id": rid, "error": text, "retry": retry})
                + "\n").encode()

    # --- input --------------------------------------------------------------

    def request_id(self, hdr):
        rid = hdr.get("id")
        if rid is None:
            self.violation("req without an id", hdr)
        return rid

    def request_meta(self, hdr):
        meta = hdr.get("meta")
        if meta is None:
            return {}
        if type(meta) is not dict:
            self.violation("req meta is not an object", hdr)
        return meta

    def read_message(self):
        """Return (header dict, payload bytes) of the next message, blocking if needed."""
        buf = self.buf
        while True:
            nl = buf.find(b"\n", self.start, self.end)
            if nl >= 0:
                break
            if self.end - self.start >= _MAX_HEADER:
                self.fatal("header line longer than %d bytes: %r..."
                           % (_MAX_HEADER, bytes(self.view[self.start:self.start + 80])))
            self.fill(self.end - self.start + 1)
        line = self.view[self.start:nl]
        if nl + 1 - self.start > _MAX_HEADER:
            self.fatal("header line longer than %d bytes: %r..."
                       % (_MAX_HEADER, bytes(line[:80])))
        try:
            hdr = _decode(str(line, "utf-8"))
        except ValueError as e:   # UnicodeDecodeError is a ValueError too
            self.fatal("header is not JSON (%s): %r" % (e, bytes(line[:200])))
        if type(hdr) is not dict:
            self.fatal("header is not a JSON object: %r" % bytes(line[:200]))
        n = hdr.get("len", 0)
        body = nl + 1
        if not n:
            if type(n) is not int:   # null, false, "", 0.0 ...
                self.violation("bad len", hdr)
            self.start = body
            return hdr, b""
        if type(n) is not int or n < 0:
            self.violation("bad len", hdr)
        if body + n <= self.end:
            self.start = body + n
            return hdr, bytes(self.view[body:body + n])
        self.start = body
        return hdr, self.read_payload(n)

    def read_payload(self, n):
        """Payload of n bytes whose start is at self.start but not all received."""
        if n <= _BUF_SIZE:
            while self.end - self.start < n:
                self.fill(n)
            self.start += n
            return bytes(self.view[self.start - n:self.start])
        # Too big for the buffer: receive straight into a buffer of its own
        # rather than growing ours for good.
        big = bytearray(n)
        have = self.end - self.start
        big[:have] = self.view[self.start:self.end]
        self.start = self.end = 0
        self.flush()
        view = memoryview(big)
        while have < n:
            got = self.recv_into(view[have:])
            have += got
        del view
        return bytes(big)

    def fill(self, need):
        """Receive more bytes, with room for `need` bytes from self.start.

        Pending answers are written first: blocking while holding them could
        deadlock with a baton that waits for them before it sends more.
        """
        if self.out:
            self.flush()
        if self.start == self.end:
            self.start = self.end = 0
        elif self.start + need > _BUF_SIZE or self.end == _BUF_SIZE:
            # Not a slice assignment from self.view: bytearray copies with
            # memcpy, which must not overlap, so take a copy first.
            kept = self.buf[self.start:self.end]
            self.buf[:len(kept)] = kept
            self.start, self.end = 0, len(kept)
        self.end += self.recv_into(self.view[self.end:])

    def recv_into(self, view):
        try:
            got = self.sock.recv_into(view)
        except ConnectionResetError:
            got = 0
        if got == 0:
            # baton closed its end (it exited or gave up on us): leave quietly.
            raise SystemExit(0)
        return got

    # --- output -------------------------------------------------------------

    def queue(self, frames, began):
        """Hold frames (bytes, or a tuple or list of bytes) for a later, shared write.

        Answers are written when no complete message is buffered (fill), or once
        the oldest one has waited _FLUSH_AGE since its handler began: a slow
        handler then writes each answer at once, while fast ones share writes.
        """
        if not self.out:
            self.out_since = began
        if type(frames) is bytes:
            self.out.append(frames)
            self.out_size += len(frames)
        else:
            self.out.extend(frames)
            self.out_size += sum(map(len, frames))
        if self.out_size >= _FLUSH_BYTES or _now() - self.out_since >= _FLUSH_AGE:
            self.flush()

    def flush(self):
        out = self.out
        if not out:
            return
        try:
            if self.out_size <= _FLUSH_BYTES:
                self.sock.sendall(out[0] if len(out) == 1 else b"".join(out))
            else:
                # Large payloads go out as they are rather than copied into a join.
                small = []
                for part in out:
                    if len(part) >= 65536:
                        if small:
                            self.sock.sendall(b"".join(small))
                            small.clear()
                        self.sock.sendall(part)
                    else:
                        small.append(part)
                if small:
                    self.sock.sendall(b"".join(small))
        except (BrokenPipeError, ConnectionResetError):
            raise SystemExit(0)
        out.clear()
        self.out_size = 0

    def write(self, data):
        self.queue(data, _now())
        self.flush()

    # --- trouble ------------------------------------------------------------

    def unknown(self, hdr):
        # Newer batons may send more message types; skipping them (payload
        # included, read_message already did) keeps this SDK usable with them.
        t = hdr.get("t")
        if t not in self.warned_types:
            self.warned_types.add(t)
            sys.stderr.write("baton_worker: ignoring unknown message type %s\n"
                             % _encode(t))
            sys.stderr.flush()

    def violation(self, what, hdr):
        self.fatal("%s: %s" % (what, json.dumps(hdr)[:200]))

    def fatal(self, what):
        self.flush()
        sys.stderr.write("baton_worker: protocol error from baton: %s\n" % what)
        sys.stderr.flush()
        raise SystemExit(2)
