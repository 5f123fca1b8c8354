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
    Large payloads travel as sealed memfds when baton offers it (payloads of
    BATON_MEMFD_MIN bytes and more): the handler still gets bytes, or with
    run(..., views=True) a read-only memoryview of the mapping (no copy);
    returning that very view answers with the same memfd. A large input a
    client put in shared memory (KServe v2) arrives the same way, mapped
    from the client's object: returning the very payload passes it on. At
    the last stage, binary v2 outputs the client asked into shared memory
    are written straight into its objects when baton hands them over.

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

Sources (stages with kind: source): a source produces items unprompted,
such as the frames of a camera, and baton groups them into sessions.

    def produce(src, state):           # state: what init() returned, or None
        for jpeg in frames(src.url):   # src.url, src.station: this station
            if not src.emit(jpeg, {"content_type": "image/jpeg"}):
                return                 # baton said stop
        src.eos()                      # optional: the current session ends here

    bw.run_source(produce, init=None)

    src.emit(payload, meta=None) -> bool sends one item; it waits (reading
    baton's messages) while baton has granted no credit, and returns False,
    sending nothing, once baton said stop. src.eos(session=None) -> bool ends
    the open session (with session: only if that one is open). src.poll(
    timeout_s=0) reads baton's messages while idle, False once stop came;
    src.stopping tells the same. run_source exits 0 when produce returns and
    1 when init or produce raises. Single-threaded: no thread of the SDK
    runs behind produce's back.

Open Inference Protocol (KServe v2), for pipelines served at
POST /v2/models/{name}/infer: the payload is the request body as received,
with meta["protocol"] == "v2" and, when the client sent binary tensors,
meta["v2_header_length"]. bw.v2 reads it and builds the answer, JSON or
binary (Triton's binary tensor extension), without numpy:

    def handle(payload, meta):
        req = bw.v2.parse(payload, meta)          # bad body: bw.Reject (422)
        x = req.input("x")                        # v2.Tensor; KeyError if absent
        y = [v * 2 for v in x.data]               # flat list, row-major
        return bw.v2.response([bw.v2.Tensor("y", "FP32", x.shape, y)], request=req)

    bw.v2.parse(payload, meta) -> v2.InferRequest: .id, .parameters (dict),
        .inputs (list of v2.Tensor), .outputs (list of dicts as sent),
        .input(name), .wants_binary(output_name) (the output's
        parameters.binary_data, else the request's binary_data_output)
    bw.v2.Tensor(name, datatype, shape, data) with data a flat (or nested)
        list of bool/int/float, or bytes (str is encoded UTF-8) for BYTES; or
        raw=bytes in binary form; or a numpy ndarray (shape None: the
        array's). A tensor has .name .datatype .shape .data (flat list),
        .raw (its bytes when it arrived binary, else None; a read-only
        memoryview of the payload, not a copy, when the handler takes views),
        .binary, .parameters, and .numpy() (imports numpy). Binary inputs are
        decoded to .data only when .data is first read. raw= keeps bytes and
        read-only memoryviews as they are (no copy): what such a view shows
        must not change until the answer is sent.
    bw.v2.response(outputs, request=None, parameters=None, model_version=None)
        -> (payload, meta) to return as is. With request: its id is echoed,
        only the outputs it asks for are sent (all if it names none), and an
        output is binary when request.wants_binary(name). meta has
        content_type and, with binary outputs, v2_header_length (None for an
        all-JSON answer to a binary request: it overrides the request's
        value, which baton's meta merge would otherwise keep). ValueError
        if values do not match shape or datatype, or are not JSON-able
        (NaN, non-UTF-8 BYTES: those must be requested binary).

Wire format: run() offers baton fast headers (docs/protocol.md#fast-headers),
which save a JSON build and parse per request; BW_FAST_HEADERS=0 in the
environment keeps it to JSON headers. Handlers see no difference.
"""

import fcntl as _fcntl
import json
import math as _math
import mmap as _mmap
import operator as _operator
import os
import select
import socket
import struct as _struct
import sys
import time
import traceback
import weakref as _weakref
from array import array as _array
from itertools import repeat as _repeat
from json.encoder import encode_basestring_ascii as _quote_ascii

__all__ = ["run", "run_source", "Source", "batch_handler", "Request", "Reject", "Retry",
           "log", "stage", "replica", "v2", "PROTO"]

PROTO = 1
__version__ = "1.2"

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


def _encode_header(obj):
    """A header as UTF-8 bytes. A lone surrogate (a file name decoded with
    surrogateescape, say) is not valid JSON text: it becomes "?" rather than
    an escape baton would refuse as a protocol violation."""
    return _encode_body(obj).encode("utf-8", "replace")

_now = time.monotonic
_ANC_SPACE = socket.CMSG_SPACE(4 * 4)   # room for a few descriptors per receive
_READY = b'{"t":"ready","proto":1}\n'
# Fast headers (docs/protocol.md): offered in "ready"; baton that accepts
# sends requests in them, and once one has come answers may use them too.
# 16 bytes: magic, kind, flags, id length, meta length (u32), payload
# length (u64), little-endian; then id, meta (JSON object text), payload.
_FAST = _struct.Struct("<BBBBIQ")
_FAST_MAGIC = 0xBA
_FAST_REQ, _FAST_RES, _FAST_ERR, _FAST_RETRY = 0x71, 0x72, 0x65, 0x01
_SEALS = (_fcntl.F_SEAL_SEAL | _fcntl.F_SEAL_SHRINK | _fcntl.F_SEAL_GROW
          | _fcntl.F_SEAL_WRITE) if hasattr(_fcntl, "F_ADD_SEALS") else 0


def _result_header(rid, meta, **fields):
    """The JSON header line of a result for rid: fields, then meta when there is
    any; a header over the protocol's limit is refused here, not by baton."""
    head = {"t": "res", "id": rid}
    head.update(fields)
    if meta:
        head["meta"] = meta
    head = _encode_header(head)
    if len(head) >= _MAX_HEADER:
        raise ValueError("result meta is %d bytes encoded; the header limit is %d"
                         % (len(head), _MAX_HEADER))
    return head + b"\n"


def _memfd_min():
    """Size from which answers go to baton as memfds, or 0 when baton takes none.

    baton says it takes them by setting BATON_MEMFD_MIN; an older baton does
    not, and then gets bytes."""
    try:
        n = int(os.environ.get("BATON_MEMFD_MIN", "0"))
    except ValueError:
        return 0
    return n if n > 0 and _SEALS and hasattr(os, "memfd_create") else 0


_MAP_FIXED = 0x10              # Linux; the mmap module does not export it
_libc = None
# While a handler runs: id(payload) -> the outputs it may write into shared
# memory itself ({name: (fd, bytes)}, docs/protocol.md), for v2.response.
_placing = {}


def _joined_view(head, fd, off, n):
    """A read-only memoryview of head followed by n bytes of fd from off (a
    page multiple), with no copy of the latter: head is written just before
    a page boundary of an anonymous mapping, and the file is mapped read-only
    right after it (MAP_FIXED, through ctypes, as the mmap module cannot).
    The mapping is undone when the last view of it goes."""
    global _libc
    import ctypes
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                             ctypes.c_int, ctypes.c_long]
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc = lib
    page = _mmap.PAGESIZE
    h = len(head)
    hp = -(-h // page) * page
    total = hp + -(-n // page) * page
    base = _libc.mmap(None, total, _mmap.PROT_READ | _mmap.PROT_WRITE,
                      _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS, -1, 0)
    if base is None or base == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "cannot map a shared-memory input")
    try:
        if _libc.mmap(base + hp, total - hp, _mmap.PROT_READ, _mmap.MAP_SHARED | _MAP_FIXED,
                      fd, off) != base + hp:
            raise OSError(ctypes.get_errno(), "cannot map a shared-memory input")
        if h:
            ctypes.memmove(base + hp - h, head, h)
            _libc.mprotect(base, hp, _mmap.PROT_READ)
    except BaseException:
        _libc.munmap(base, total)
        raise
    arr = (ctypes.c_char * (h + n)).from_address(base + hp - h)
    _weakref.finalize(arr, _libc.munmap, base, total)
    return memoryview(arr).cast("B").toreadonly()


def _place(params, where, data):
    """Writes data (bytes-like) into a place (fd, bytes) the client gave an
    output, from offset 0, when it fits: its params then say "baton_placed"
    instead of "binary_data_size". False when it does not fit (left to
    carry in the answer)."""
    view = memoryview(data).cast("B")
    if where is None or len(view) > where[1]:
        return False
    done = 0
    while done < len(view):
        done += os.pwrite(where[0], view[done:], done)
    params.pop("binary_data_size", None)
    params["baton_placed"] = len(view)
    return True


def _place_outputs(result, places):
    """result with the binary outputs that places names written into their
    objects (from offset 0) instead of carried: each becomes
    "baton_placed": bytes in its parameters. A result that is not a binary
    v2 response, or an output larger than its place, is left as it is (for
    baton to copy, or to refuse)."""
    if type(result) is not tuple or len(result) != 2 or not isinstance(result[1], dict):
        return result
    body, meta = result
    hl = meta.get("v2_header_length")
    if type(hl) is not int or not isinstance(body, (bytes, bytearray, memoryview)):
        return result
    view = memoryview(body).cast("B")
    try:
        doc = _decode(str(view[:hl], "utf-8"))
    except ValueError:
        return result
    outputs = doc.get("outputs") if type(doc) is dict else None
    if type(outputs) is not list:
        return result
    pos, parts, placed = hl, [], False
    for o in outputs:
        params = o.get("parameters") if type(o) is dict else None
        size = params.get("binary_data_size") if type(params) is dict else None
        if type(size) is not int or size < 0 or pos + size > len(view):
            return result      # baton says what is wrong with it
        if _place(params, places.get(o.get("name")), view[pos:pos + size]):
            placed = True
        else:
            parts.append(view[pos:pos + size])
        pos += size
    if not placed:
        return result
    parts.append(view[pos:])
    head = _encode_body(doc).encode()
    meta = dict(meta)
    if any(len(p) for p in parts):
        meta["v2_header_length"] = len(head)
        return b"".join([head] + parts), meta
    del meta["v2_header_length"]
    meta["content_type"] = "application/json"
    return head, meta


class _Memfd:
    """A frame whose payload is a sealed memfd: the header, then the descriptor
    sent with it (SCM_RIGHTS). len() is the header's, for the output queue."""

    __slots__ = ("head", "fd")

    def __init__(self, head, fd):
        self.head = head
        self.fd = fd

    def __len__(self):
        return len(self.head)


def _sealed_memfd(body):
    """A new memfd holding body, sealed so that nobody can change it any more."""
    fd = os.memfd_create("baton-res", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(body).cast("B")
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        _fcntl.fcntl(fd, _fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


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


def run(handler, init=None, batch=None, views=False):
    """Serve requests with handler until baton says stop; never returns.

    init, if given, is called without arguments before "ready" is sent; a
    non-None return value is passed to every handler call as a last argument.
    batch=None means: a batch handler if handler was marked @batch_handler.
    views=True hands large payloads (those baton sent as a memfd) to the
    handler as a read-only memoryview of the mapped memfd instead of bytes:
    no copy at all, and returning that very view answers with the same
    memfd. Other payloads are bytes either way.
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
    _Worker(sock, handler, bool(batch), state, views).serve()


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

    def __init__(self, sock, handler, batch, state, views=False):
        self.sock = sock
        # Large payloads as sealed memfds (docs/protocol.md, "Large payloads").
        self.memfd_min = _memfd_min()
        self.views = views
        self.fds = []             # descriptors received, not yet claimed by a header
        self.req_fds = {}         # request id -> (payload view or None, its memfd)
        self.req_same = {}        # request id -> its payload, partly in a client's object
        self.req_place = {}       # request id -> {output: (descriptor, bytes)} to write into
        self.out_fds = 0          # _Memfd frames in self.out
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
        # BW_FAST_HEADERS=0 makes this worker speak JSON headers only.
        self.offer_fast = os.environ.get("BW_FAST_HEADERS", "1") != "0"
        self.fast = False         # baton sent a fast header: answers use them too

    # --- the loop -----------------------------------------------------------

    def serve(self):
        ready = b'{"t":"ready","proto":1'
        if self.offer_fast:
            ready += b',"fast":1'
        if self.memfd_min:
            ready += b',"memfd":true,"region":true,"place":true'
        self.write(ready + b'}\n')
        read = self.read_message
        while True:
            hdr, payload = read()
            t = hdr.get("t")
            if t == "req":
                rid = self.request_id(hdr)
                if "place" in hdr:
                    self.take_places(rid, hdr)
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
                rid = self.request_id(h)
                if "place" in h:
                    self.take_places(rid, h)
                reqs.append(Request(rid, payload, self.request_meta(h)))
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
        places = self.req_place.get(rid) if self.req_place else None
        if places:
            _placing[id(payload)] = places
        try:
            frames = self.success(rid, self.handler(payload, meta, *self.extra))
        except Exception as e:
            frames = self.failure(rid, e)
        finally:
            if places:
                _placing.clear()
        self.queue(frames, began)

    def handle_batch(self, reqs):
        began = _now()
        for r in reqs:
            places = self.req_place.get(r.id) if self.req_place else None
            if places:
                _placing[id(r.payload)] = places
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
        finally:
            _placing.clear()
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
        if self.req_place:
            places = self.req_place.pop(rid, None)
            if places is not None:
                try:
                    result = _place_outputs(result, places)
                finally:
                    for fd, _ in places.values():
                        os.close(fd)
        if self.req_same:
            payload = self.req_same.pop(rid, None)
            if payload is not None and (result is payload or (
                    type(result) is tuple and len(result) == 2 and result[0] is payload)):
                return self.same(rid, result)
        entry = self.req_fds.pop(rid, None) if self.req_fds else None
        if entry is None:
            return self.answer(rid, result, None)
        view, fd = entry
        dup = None
        try:
            # The handler gave back the view it got: answer with the same memfd.
            if view is not None and (result is view or (
                    type(result) is tuple and len(result) == 2 and result[0] is view)):
                dup = os.dup(fd)
            frame = self.answer(rid, result, dup)
            dup = None        # the frame has it now
            return frame
        finally:
            os.close(fd)
            if dup is not None:   # answer() refused the result
                os.close(dup)

    def answer(self, rid, result, same_fd):
        """success() for a result; same_fd, when not None, is a memfd holding it."""
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
            if same_fd is not None or (self.memfd_min and result.nbytes >= self.memfd_min):
                body = result    # the memfd it came in, or copied once into a new one
            else:
                # Copied because the answer may be written later, after the handler
                # has reused its buffer.
                body = bytes(result)
        else:
            raise TypeError("handler returned %s; expected bytes, str, dict, list, "
                            "None or (body, meta)" % type(result).__name__)
        size = body.nbytes if type(body) is memoryview else len(body)
        if same_fd is not None or (self.memfd_min and size >= self.memfd_min):
            head = _result_header(rid, meta, memfd=size)
            return _Memfd(head, same_fd if same_fd is not None else _sealed_memfd(body))
        if self.fast and type(rid) is str and 0 < len(rid) < 64:
            mtext = _encode_header(meta) if meta else b""
            if len(mtext) + 80 >= _MAX_HEADER:
                raise ValueError("result meta is %d bytes encoded; the header limit is %d"
                                 % (len(mtext), _MAX_HEADER))
            rb = rid.encode()
            head = _FAST.pack(_FAST_MAGIC, _FAST_RES, 0, len(rb), len(mtext), len(body)) + rb
            if mtext:
                head += mtext
        elif meta:
            head = _result_header(rid, meta, len=len(body))
        else:
            head = b'{"t":"res","id":%b,"len":%d}\n' % (_json_id(rid), len(body))
        if not body:
            return head
        if len(body) < 4096:
            return head + body
        return (head, body)

    def same(self, rid, result):
        """The answer "my payload, unchanged" (docs/protocol.md): baton passes on
        what it has, and the client's object is not copied."""
        meta = result[1] if type(result) is tuple else None
        if meta is not None and not isinstance(meta, dict):
            raise TypeError("result meta must be a dict, not %s" % type(meta).__name__)
        return _result_header(rid, meta, same=True)

    def failure(self, rid, exc, log=True):
        """Frame failing rid with exc; prints the traceback of an unexpected exc."""
        if self.req_same:
            self.req_same.pop(rid, None)
        if self.req_place:
            for fd, _ in self.req_place.pop(rid, {}).values():
                os.close(fd)
        entry = self.req_fds.pop(rid, None) if self.req_fds else None
        if entry is not None:
            os.close(entry[1])
        text, retry = _failure(exc)
        if log and not isinstance(exc, (Reject, Retry)):
            sys.stderr.write("baton_worker: request %s failed\n" % _encode(rid))
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            sys.stderr.flush()
        if self.fast and type(rid) is str and 0 < len(rid) < 64:
            rb = rid.encode()
            tb = text.encode("utf-8", "replace").replace(b"\0", b"?")
            return _FAST.pack(_FAST_MAGIC, _FAST_ERR, _FAST_RETRY if retry else 0, len(rb), 0,
                              len(tb)) + rb + tb
        return _encode_header({"t": "res", "id": rid, "error": text, "retry": retry}) + b"\n"

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
        while self.start == self.end:
            self.fill(1)
        if buf[self.start] == _FAST_MAGIC:
            if not self.offer_fast:
                self.fatal("a fast header, which this worker did not offer")
            return self.read_fast()
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
        if "memfd" in hdr:
            self.start = nl + 1
            return hdr, self.memfd_payload(hdr)
        if "region" in hdr:
            return hdr, self.region_payload(hdr, nl + 1)
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

    def read_fast(self):
        """A request in a fast header, as the header dict a JSON one would give."""
        while self.end - self.start < 16:
            self.fill(16)
        magic, kind, flags, idlen, metalen, n = _FAST.unpack_from(self.buf, self.start)
        if kind != _FAST_REQ or flags or not idlen or 16 + idlen + metalen > _MAX_HEADER:
            self.fatal("bad fast header: %r" % bytes(self.view[self.start:self.start + 16]))
        head = 16 + idlen + metalen
        while self.end - self.start < head:
            self.fill(head)
        at = self.start + 16
        try:
            rid = str(self.view[at:at + idlen], "utf-8")
            meta = _decode(str(self.view[at + idlen:at + idlen + metalen], "utf-8")) \
                if metalen else {}
        except ValueError as e:
            self.fatal("fast header's id or meta is not UTF-8 JSON (%s)" % e)
        if type(meta) is not dict:
            self.fatal("fast header's meta is not a JSON object")
        self.fast = True
        body = self.start + head
        hdr = {"t": "req", "id": rid, "meta": meta}
        if not n:
            self.start = body
            return hdr, b""
        if body + n <= self.end:
            self.start = body + n
            return hdr, bytes(self.view[body:body + n])
        self.start = body
        return hdr, self.read_payload(n)

    def memfd_payload(self, hdr):
        """The payload of a message whose header says memfd: the descriptor sent
        with the header, mapped read-only (bytes, or a view with views=True)."""
        n = hdr.get("memfd")
        if not self.memfd_min or not self.fds:
            self.violation("memfd without a descriptor, or never asked for", hdr)
        fd = self.fds.pop(0)
        if type(n) is not int or n < 0 or os.fstat(fd).st_size < n:
            os.close(fd)
            self.violation("bad memfd size", hdr)
        if n == 0:
            os.close(fd)
            return b""
        mm = _mmap.mmap(fd, n, flags=_mmap.MAP_SHARED, prot=_mmap.PROT_READ)
        if self.views and hdr.get("t") == "req":
            view = memoryview(mm)
            # Kept until the request is answered: returning the view passes the fd on.
            self.req_fds[hdr.get("id")] = (view, fd)
            return view
        os.close(fd)
        try:
            return mm[:]
        finally:
            mm.close()

    def take_places(self, rid, hdr):
        """The outputs this last stage may write into a client's objects itself
        ("place": [[name, bytes], ...], docs/protocol.md): one writable
        descriptor each, after the payload's."""
        place = hdr["place"]
        if (not self.memfd_min or type(place) is not list or len(self.fds) < len(place)
                or any(type(p) is not list or len(p) != 2 or type(p[0]) is not str
                       or type(p[1]) is not int or p[1] < 0 for p in place)):
            self.violation("bad place, or a place never asked for", hdr)
        self.req_place[rid] = {name: (self.fds.pop(0), n) for name, n in place}

    def region_payload(self, hdr, body):
        """The payload of a request whose header says region [off, n]: its len
        bytes in the frame, then n bytes of the client's object that came as a
        read-only descriptor (docs/protocol.md, "Shared-memory inputs"). Only
        that range is mapped, and the descriptor is closed at once."""
        region, h = hdr.get("region"), hdr.get("len", 0)
        if (not self.memfd_min or not self.fds or type(region) is not list
                or len(region) != 2 or type(h) is not int or h < 0
                or any(type(v) is not int or v < 0 for v in region)
                or region[0] % _mmap.PAGESIZE or hdr.get("t") != "req"):
            self.violation("bad region, or a region never asked for", hdr)
        off, n = region
        fd = self.fds.pop(0)
        try:
            if body + h <= self.end:
                self.start = body + h
                head = bytes(self.view[body:body + h])
            else:
                self.start = body
                head = self.read_payload(h)
            payload = None
            if self.views and n:
                try:
                    payload = _joined_view(head, fd, off, n)
                except OSError:
                    pass
            if payload is None and n:
                mm = _mmap.mmap(fd, n, flags=_mmap.MAP_SHARED, prot=_mmap.PROT_READ,
                                offset=off)
                try:
                    payload = b"".join((head, mm))     # one copy: the handler takes bytes
                finally:
                    mm.close()
            elif payload is None:
                payload = head
            if self.views and type(payload) is not memoryview:
                payload = memoryview(payload)
            self.req_same[hdr.get("id")] = payload
            return payload
        finally:
            os.close(fd)

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
            if self.memfd_min:
                # Descriptors come with the first bytes of their headers.
                got, anc, _, _ = self.sock.recvmsg_into([view], _ANC_SPACE,
                                                        socket.MSG_CMSG_CLOEXEC)
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds = _array("i")
                        fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
                        self.fds.extend(fds)
            else:
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
        elif type(frames) is _Memfd:
            self.out.append(frames)
            self.out_size += len(frames)
            self.out_fds += 1
        else:
            self.out.extend(frames)
            self.out_size += sum(map(len, frames))
            if self.memfd_min:
                self.out_fds += sum(type(f) is _Memfd for f in frames)
        if self.out_size >= _FLUSH_BYTES or _now() - self.out_since >= _FLUSH_AGE:
            self.flush()

    def flush(self):
        out = self.out
        if not out:
            return
        try:
            if self.out_fds:
                self.flush_with_fds(out)
            elif self.out_size <= _FLUSH_BYTES:
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
        self.out_fds = 0

    def flush_with_fds(self, out):
        """flush() when some frames carry a memfd: each goes with its header's bytes."""
        small = []
        for part in out:
            if type(part) is not _Memfd:
                small.append(part)
                continue
            if small:
                self.sock.sendall(b"".join(small))
                small.clear()
            try:
                sent = self.sock.sendmsg([part.head], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                        _array("i", [part.fd]))])
                if sent < len(part.head):
                    self.sock.sendall(part.head[sent:])
            finally:
                os.close(part.fd)
        if small:
            self.sock.sendall(b"".join(small))

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


# --- Sources ------------------------------------------------------------------
#
# A source produces items unprompted (a camera's frame extractor). Nothing
# here runs in a thread: emit() reads what baton has sent whenever it is
# called, and waits for credit only when it has none left.


def run_source(produce, init=None):
    """Run produce(src, state) as a baton source; never returns.

    init, if given, is called without arguments before "ready" is sent, and
    what it returns is passed to produce as state (None without init).
    produce gets a bw.Source and emits items with src.emit(); when it
    returns, the process exits 0. An exception from init or produce is
    printed and the process exits 1 (baton restarts it with backoff).
    """
    if not callable(produce):
        raise TypeError("baton_worker.run_source: produce must be callable")
    sock = _open_socket()
    state = None
    if init is not None:
        try:
            state = init()
        except Exception:
            _print_error("init() failed; not producing")
            raise SystemExit(1)
    src = Source(sock)
    src._send(_READY)
    try:
        produce(src, state)
    except Exception:
        _print_error("produce() failed")
        raise SystemExit(1)
    raise SystemExit(0)


class Source:
    """The connection of a source to baton, handed to produce() by run_source.

    src.emit(payload, meta=None) -> bool   send one item; waits while there is
                                           no credit; False once baton said stop
    src.eos(session=None) -> bool          end the current session (or the named
                                           one if it is still open); False once
                                           baton said stop
    src.poll(timeout_s=0) -> bool          read baton's messages, waiting up to
                                           timeout_s for one; False once stop came
    src.stopping                           True once baton said stop
    src.url, src.station                   this station's url and name
    src.credit                             items that may be emitted now (None:
                                           unlimited)
    Not thread-safe: call it from the thread that runs produce().
    """

    def __init__(self, sock):
        self._sock = sock
        self._fd = sock.fileno()
        self._buf = bytearray()
        self._credit = 0
        self._unlimited = False
        self._stopping = False
        self._warned = set()

    @property
    def url(self):
        return os.environ.get("BATON_SOURCE_URL")

    @property
    def station(self):
        return os.environ.get("BATON_STATION")

    @property
    def stopping(self):
        return self._stopping

    @property
    def credit(self):
        return None if self._unlimited else self._credit

    def emit(self, payload, meta=None):
        """Send one item: payload (bytes, or str sent as UTF-8) and an optional
        meta dict. Waits, reading baton's messages, while no credit is left.
        Returns True when sent, False when baton asked the source to stop
        (nothing is sent then). TypeError/ValueError for a bad payload or meta."""
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError("emit: payload must be bytes or str, not %s"
                            % type(payload).__name__)
        if meta is not None and not isinstance(meta, dict):
            raise TypeError("emit: meta must be a dict or None, not %s"
                            % type(meta).__name__)
        n = payload.nbytes if isinstance(payload, memoryview) else len(payload)
        hdr = {"t": "emit", "len": n}
        if meta:
            hdr["meta"] = meta
        head = _encode_header(hdr)
        if len(head) >= _MAX_HEADER:
            raise ValueError("emit: meta is %d bytes encoded; the header limit is %d"
                             % (len(head), _MAX_HEADER))
        self._pump(0)
        while not self._stopping and not self._unlimited and self._credit <= 0:
            self._pump(None)
        if self._stopping:
            return False
        if n < 65536:
            self._send(head + b"\n" + bytes(payload))
        else:
            self._send(head + b"\n")
            self._send(payload)
        if not self._unlimited:
            self._credit -= 1
        return True

    def eos(self, session=None):
        """End the current session; with session (a str), only if that session
        is the open one. Needs no credit. False (and nothing sent) once baton
        asked the source to stop: baton closes the open session itself then."""
        if session is not None and not isinstance(session, str):
            raise TypeError("eos: session must be a str or None, not %s"
                            % type(session).__name__)
        self._pump(0)
        if self._stopping:
            return False
        if session is None:
            self._send(b'{"t":"eos"}\n')
        else:
            self._send(_encode_header({"t": "eos", "session": session}) + b"\n")
        return True

    def poll(self, timeout_s=0):
        """Read baton's messages, waiting up to timeout_s seconds (None: until
        one arrives) when none is there. Returns False once stop arrived."""
        if not self._stopping:
            if timeout_s is None:
                self._pump(None)
            else:
                self._pump(max(0.0, float(timeout_s)))
        return not self._stopping

    # --- the wire ---------------------------------------------------------------

    def _send(self, data):
        try:
            self._sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            raise SystemExit(0)   # baton is gone: nobody to produce for

    def _pump(self, timeout):
        """Wait up to timeout seconds (None: no limit) until baton's end is
        readable, then take every byte there is and handle each complete
        message. A closed channel ends the process with status 0."""
        wait = -1 if timeout is None else int(_math.ceil(timeout * 1000))
        while True:
            try:
                ready = select.poll()
                ready.register(self._fd, select.POLLIN)
                if not ready.poll(wait):
                    return
                break
            except InterruptedError:
                continue
        closed = False
        while True:
            try:
                data = self._sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                data = b""
            if not data:
                closed = True
                break
            self._buf += data
        self._handle_buffered()
        if closed:
            raise SystemExit(0)

    def _handle_buffered(self):
        buf = self._buf
        pos = 0
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if len(buf) - pos >= _MAX_HEADER:
                    self._fatal("header line longer than %d bytes: %r..."
                                % (_MAX_HEADER, bytes(buf[pos:pos + 80])))
                break
            if nl + 1 - pos > _MAX_HEADER:
                self._fatal("header line longer than %d bytes: %r..."
                            % (_MAX_HEADER, bytes(buf[pos:pos + 80])))
            line = bytes(buf[pos:nl])
            try:
                hdr = _decode(line.decode("utf-8"))
            except ValueError as e:
                self._fatal("header is not JSON (%s): %r" % (e, line[:200]))
            if type(hdr) is not dict:
                self._fatal("header is not a JSON object: %r" % line[:200])
            n = hdr.get("len", 0)
            if type(n) is not int or n < 0:
                self._fatal("bad len: %s" % json.dumps(hdr)[:200])
            if len(buf) - (nl + 1) < n:
                break             # the payload is still on its way
            pos = nl + 1 + n      # payloads to a source carry nothing it uses
            self._handle(hdr)
        del buf[:pos]

    def _handle(self, hdr):
        t = hdr.get("t")
        if t == "credit":
            n = hdr.get("n")
            if type(n) is not int or n < -1:
                self._fatal("credit without a valid n: %s" % json.dumps(hdr)[:200])
            if n == -1:
                self._unlimited = True
            else:
                self._credit += n
        elif t == "stop":
            self._stopping = True
        elif t == "ping":
            # baton sends sources no pings today; answering costs nothing and
            # keeps a source alive under a baton that does.
            self._send(b'{"t":"pong","seq":%b}\n' % _encode(hdr.get("seq")).encode())
        elif t not in self._warned:
            self._warned.add(t)
            sys.stderr.write("baton_worker: ignoring unknown message type %s\n"
                             % _encode(t))
            sys.stderr.flush()

    def _fatal(self, what):
        sys.stderr.write("baton_worker: protocol error from baton: %s\n" % what)
        sys.stderr.flush()
        raise SystemExit(2)


# --- Open Inference Protocol (KServe v2) ------------------------------------
#
# Triton's binary tensor extension: a body is a JSON header followed by the
# tensors' bytes, little-endian, row-major, without padding, in the order of
# the inputs (or outputs) whose parameters carry binary_data_size.  BOOL is one
# byte 0 or 1; a BYTES element is a 4-byte little-endian length and its bytes.

_BIG_ENDIAN = sys.byteorder == "big"


def _typecode(codes, size):
    for code in codes:
        if _array(code).itemsize == size:
            return code
    raise ImportError("baton_worker: no array type of %d bytes" % size)


# datatype -> bytes per element (BYTES has none: its elements vary)
_V2_SIZE = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8,
            "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
            "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8}
_V2_DATATYPES = frozenset(list(_V2_SIZE) + ["BYTES"])
# datatypes that the array module reads and writes as they are
_V2_ARRAY = {dt: _typecode("BHILQ" if dt[0] == "U" else "bhilq", _V2_SIZE[dt])
             for dt in ("UINT8", "UINT16", "UINT32", "UINT64",
                        "INT8", "INT16", "INT32", "INT64")}
_V2_ARRAY["FP32"] = "f"
_V2_ARRAY["FP64"] = "d"
_V2_U16 = _typecode("H", 2)
_V2_U32 = _typecode("IL", 4)
_V2_INT_RANGE = {dt: ((0, (1 << (8 * _V2_SIZE[dt])) - 1) if dt[0] == "U" else
                      (-(1 << (8 * _V2_SIZE[dt] - 1)), (1 << (8 * _V2_SIZE[dt] - 1)) - 1))
                 for dt in _V2_SIZE if "INT" in dt}
_V2_FLOATS = frozenset(("FP16", "BF16", "FP32", "FP64"))
# numpy dtypes, for Tensor.numpy() and tensors made from an ndarray
_V2_NUMPY = {"BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4",
             "UINT64": "<u8", "INT8": "i1", "INT16": "<i2", "INT32": "<i4",
             "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
_V2_LEN = _struct.Struct("<I")


class _V2BadRequest(Reject, ValueError):
    """A v2 request that cannot be read: the client's fault (HTTP 422)."""


class _V2NoInput(Reject, KeyError):
    """The request has no input of that name (HTTP 422 if not caught)."""

    def __str__(self):   # KeyError would show the message quoted
        return Exception.__str__(self)


def _v2_count(shape):
    return _math.prod(shape)


def _v2_flatten(data):
    """Nested lists (or tuples) in row-major order -> one flat list."""
    if type(data) is not list:
        data = list(data)
    while any(map(isinstance, data, _repeat((list, tuple)))):   # map: a C loop
        flat = []
        for x in data:
            if isinstance(x, (list, tuple)):
                flat.extend(x)
            else:
                flat.append(x)
        data = flat
    return data


def _v2_values(name, data):
    """User-given tensor values -> a flat list; TypeError if not a list of values."""
    if isinstance(data, (str, bytes, bytearray, memoryview)) or not hasattr(data, "__iter__"):
        raise TypeError("v2.Tensor %s: data must be a list of values, not %s "
                        "(a list of one, or raw= for binary data)"
                        % (name, type(data).__name__))
    return _v2_flatten(data)


def _v2_split_bytes(raw, count, name, error):
    """The elements of a binary BYTES tensor, as a list of bytes."""
    out = []
    pos, end = 0, len(raw)
    unpack = _V2_LEN.unpack_from
    while pos < end:
        if end - pos < 4:
            raise error("tensor %s: BYTES data ends inside an element length" % name)
        n = unpack(raw, pos)[0]
        pos += 4
        if n > end - pos:
            raise error("tensor %s: BYTES element %d claims %d bytes, %d are left"
                        % (name, len(out), n, end - pos))
        out.append(bytes(raw[pos:pos + n]))
        pos += n
    if len(out) != count:
        raise error("tensor %s: BYTES data holds %d elements, shape says %d"
                    % (name, len(out), count))
    return out


def _v2_decode(datatype, raw, count):
    """Binary tensor bytes (length already checked) -> flat list of values."""
    if datatype == "BOOL":
        return [b != 0 for b in raw]
    if datatype == "FP16":
        return list(_struct.unpack("<%de" % count, raw))
    if datatype == "BF16":
        # A bfloat16 is the upper half of a float32: in little-endian order,
        # two zero bytes and then its own two.
        wide = bytearray(4 * count)
        wide[2::4] = raw[0::2]
        wide[3::4] = raw[1::2]
        a = _array("f")
        a.frombytes(wide)
    else:
        a = _array(_V2_ARRAY[datatype])
        a.frombytes(raw)
    if _BIG_ENDIAN:
        a.byteswap()
    return a.tolist()


def _v2_encode(t, data):
    """A tensor's flat list of values -> binary tensor bytes; ValueError if bad."""
    dt = t.datatype
    try:
        if dt == "BYTES":
            parts = []
            for v in data:
                if isinstance(v, str):
                    v = v.encode()
                elif isinstance(v, (bytes, bytearray, memoryview)):
                    v = bytes(v)
                else:
                    raise TypeError("a BYTES element must be bytes or str, not %s"
                                    % type(v).__name__)
                parts.append(_V2_LEN.pack(len(v)))
                parts.append(v)
            return b"".join(parts)
        if dt == "BOOL":
            return bytes([1 if v else 0 for v in data])
        if dt == "FP16":
            try:
                return _struct.pack("<%de" % len(data), *data)
            except OverflowError:   # beyond FP16's range: infinity, as IEEE rounds
                return b"".join(_v2_pack_fp16(v) for v in data)
        if dt == "BF16":
            a = _array(_V2_U32)
            a.frombytes(_array("f", data).tobytes())
            if _BIG_ENDIAN:
                a.byteswap()
            # Round the float32 bits to nearest, ties to even; NaN stays a
            # (quiet) NaN instead of rounding into infinity.
            a = _array(_V2_U16, [
                (b >> 16) | 0x40 if b & 0x7fffffff > 0x7f800000
                else (b + 0x7fff + ((b >> 16) & 1)) >> 16
                for b in a])
        else:
            a = _array(_V2_ARRAY[dt], data)
    except (TypeError, OverflowError, _struct.error) as e:
        raise ValueError("output %s (%s): %s" % (t.name, dt, e)) from None
    if _BIG_ENDIAN:
        a.byteswap()
    return a.tobytes()


def _v2_pack_fp16(v):
    try:
        return _struct.pack("<e", v)
    except OverflowError:
        return _struct.pack("<e", _math.copysign(_math.inf, v))


def _v2_json_in(datatype, data, name):
    """Values of a JSON input -> the Python values of its datatype."""
    def bad(i, v):
        return _V2BadRequest("input %s: element %d (%s) is not %s"
                             % (name, i, _encode(v)[:40], datatype))
    if datatype == "BYTES":   # strings in JSON, as Triton sends them
        out = []
        for i, v in enumerate(data):
            if type(v) is not str:
                raise bad(i, v)
            out.append(v.encode())
        return out
    if datatype == "BOOL":
        for i, v in enumerate(data):
            if type(v) is not bool:
                raise bad(i, v)
        return data
    if datatype in _V2_FLOATS:
        for i, v in enumerate(data):
            if type(v) is not float and type(v) is not int:
                raise bad(i, v)
        return [float(v) for v in data]
    lo, hi = _V2_INT_RANGE[datatype]
    for i, v in enumerate(data):
        if type(v) is not int or not lo <= v <= hi:
            raise bad(i, v)
    return data


def _v2_json_out(t, data):
    """A tensor's flat list of values -> JSON-ready values; ValueError if bad."""
    dt = t.datatype
    i = 0
    try:
        if dt == "BYTES":
            out = []
            for i, v in enumerate(data):
                if isinstance(v, (bytes, bytearray, memoryview)):
                    try:
                        v = str(v, "utf-8")
                    except UnicodeDecodeError:
                        raise ValueError(
                            "output %s: BYTES element %d is not UTF-8, which JSON "
                            "cannot carry; send it binary (the client asks with "
                            "parameters binary_data)" % (t.name, i)) from None
                elif not isinstance(v, str):
                    raise TypeError("a BYTES element must be bytes or str, not %s"
                                    % type(v).__name__)
                out.append(v)
            return out
        if dt == "BOOL":
            return [bool(v) for v in data]
        if dt in _V2_FLOATS:
            out = [float(v) for v in data]
            for i, v in enumerate(out):
                if not _math.isfinite(v):
                    raise ValueError(
                        "output %s: element %d is %r, which JSON cannot carry; send "
                        "it binary (the client asks with parameters binary_data)"
                        % (t.name, i, v))
            return out
        lo, hi = _V2_INT_RANGE[dt]
        out = [int(_operator.index(v)) for v in data]
        for i, v in enumerate(out):
            if not lo <= v <= hi:
                raise ValueError("output %s: element %d (%d) is out of range for %s"
                                 % (t.name, i, v, dt))
        return out
    except (TypeError, OverflowError) as e:
        raise ValueError("output %s (%s): element %d: %s" % (t.name, dt, i, e)) from None


def _v2_check_raw(t, raw, count, error):
    """Raise error unless raw holds exactly count elements of t's datatype."""
    size = _V2_SIZE.get(t.datatype)
    if size is None:
        _v2_split_bytes(raw, count, t.name, error)
    elif len(raw) != size * count:
        raise error("tensor %s: %d bytes of %s data, shape %s needs %d"
                    % (t.name, len(raw), t.datatype, t.shape, size * count))


def _v2_shape(shape, what):
    try:
        shape = [_operator.index(d) for d in shape]
    except TypeError:
        raise TypeError("%s: shape must be a list of integers, not %r"
                        % (what, shape)) from None
    if any(d < 0 for d in shape):
        raise ValueError("%s: shape %s has a negative dimension" % (what, shape))
    return shape


class _V2Tensor:
    """One named tensor: name, datatype, shape and its values.

    Tensor(name, datatype, shape, data) with data a flat (or nested, row-major)
    list of Python values: bool, int, float, or bytes for BYTES (str is taken
    as UTF-8). Or Tensor(name, datatype, shape, raw=bytes) with the tensor
    already in binary form. Or, when numpy is in use, data may be an ndarray
    (shape may then be None: the array's shape).

    .data     flat list of values, row-major (decoded from .raw on first use)
    .raw      the tensor's bytes in binary form when it arrived binary (or was
              made from raw or an ndarray), else None
    .binary   True for an input that arrived as binary data
    .parameters  dict, the tensor's "parameters" (binary_data_size removed)
    .numpy()  an ndarray of the shape (imports numpy; read-only when it
              shares .raw; BF16 comes out as float32, BYTES as objects)
    """

    __slots__ = ("name", "datatype", "shape", "parameters", "binary", "_data", "_raw")

    def __init__(self, name, datatype, shape=None, data=None, raw=None, parameters=None):
        if not isinstance(name, str):
            raise TypeError("v2.Tensor: name must be a str, not %s" % type(name).__name__)
        if not isinstance(datatype, str) or datatype.upper() not in _V2_DATATYPES:
            raise ValueError("v2.Tensor %s: unknown datatype %r (one of %s)"
                             % (name, datatype, ", ".join(sorted(_V2_DATATYPES))))
        datatype = datatype.upper()
        if (data is None) == (raw is None):
            raise TypeError("v2.Tensor %s: give data or raw, not %s"
                            % (name, "both" if raw is not None else "neither"))
        np = sys.modules.get("numpy")   # an ndarray means numpy is loaded already
        if np is not None and isinstance(data, np.ndarray):
            if shape is None:
                shape = data.shape
            if datatype == "BYTES":
                data = data.ravel().tolist()
            elif datatype == "BF16":   # rounded as _v2_encode does, NaN kept
                f = np.ascontiguousarray(data.astype(np.float32, casting="same_kind"))
                bits = f.view(np.uint32)
                raw = np.where(np.isnan(f), (bits >> 16) | 0x40,
                               (bits + 0x7fff + ((bits >> 16) & 1)) >> 16
                               ).astype("<u2").tobytes()
                data = None
            else:
                raw = data.astype(_V2_NUMPY[datatype], casting="same_kind",
                                  copy=False).tobytes()
                data = None
        if shape is None:
            raise TypeError("v2.Tensor %s: shape is needed" % name)
        if data is not None:
            data = _v2_values(name, data)
        elif not isinstance(raw, (bytes, bytearray, memoryview)):
            raise TypeError("v2.Tensor %s: raw must be bytes, not %s"
                            % (name, type(raw).__name__))
        elif type(raw) is memoryview and raw.readonly and raw.c_contiguous:
            raw = raw.cast("B") if raw.format != "B" or raw.ndim != 1 else raw
        elif type(raw) is not bytes:
            raw = bytes(raw)
        if parameters is not None and not isinstance(parameters, dict):
            raise TypeError("v2.Tensor %s: parameters must be a dict" % name)
        self.name = name
        self.datatype = datatype
        self.shape = _v2_shape(shape, "v2.Tensor " + name)
        self.parameters = dict(parameters) if parameters else {}
        self.binary = False
        self._data = data
        self._raw = raw

    @classmethod
    def _make(cls, name, datatype, shape, data, raw, parameters, binary):
        t = cls.__new__(cls)
        t.name, t.datatype, t.shape, t.parameters = name, datatype, shape, parameters
        t.binary, t._data, t._raw = binary, data, raw
        return t

    @property
    def data(self):
        if self._data is None:   # decoded on first use: a worker may want .raw only
            count = _v2_count(self.shape)
            if self.datatype == "BYTES":
                self._data = _v2_split_bytes(self._raw, count, self.name, ValueError)
            else:
                _v2_check_raw(self, self._raw, count, ValueError)
                self._data = _v2_decode(self.datatype, self._raw, count)
        return self._data

    @data.setter
    def data(self, values):   # new values: the old bytes no longer match
        self._data = _v2_values(self.name, values)
        self._raw = None

    @property
    def raw(self):
        return self._raw

    def numpy(self):
        import numpy as np
        if self.datatype == "BYTES":
            a = np.empty(len(self.data), dtype=object)
            a[:] = self.data
        elif self.datatype == "BF16":
            if self._raw is not None:
                a = (np.frombuffer(self._raw, dtype="<u2").astype("<u4") << 16).view("<f4")
            else:
                a = np.array(self._data, dtype=np.float32)
        elif self._raw is not None:
            a = np.frombuffer(self._raw, dtype=_V2_NUMPY[self.datatype])
        else:
            a = np.array(self._data, dtype=_V2_NUMPY[self.datatype])
        return a.reshape(self.shape)

    def __repr__(self):
        if self._data is not None and len(self._data) <= 8:
            what = repr(self._data)
        elif self._data is not None:
            what = "<%d values>" % len(self._data)
        else:
            what = "<%d bytes>" % len(self._raw)
        return "v2.Tensor(%r, %r, %r, %s%s)" % (self.name, self.datatype, self.shape,
                                               what, ", binary" if self.binary else "")


class _V2Request:
    """A parsed v2 infer request.

    .id          the request's "id", or None
    .parameters  dict, the request's "parameters" ({} if none)
    .inputs      list of v2.Tensor, in request order
    .outputs     the request's "outputs", a list of dicts as sent ([] if none)
    .model_name  meta["model_name"] (the pipeline), or None
    .input(name) the input of that name; KeyError (also a bw.Reject) if none
    .wants_binary(output_name)  whether that output should be sent binary
    """

    __slots__ = ("id", "parameters", "inputs", "outputs", "model_name", "_header_length",
                 "_places")

    def __init__(self, id=None, parameters=None, inputs=(), outputs=(), model_name=None):
        self.id = id
        self.parameters = parameters if parameters is not None else {}
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.model_name = model_name
        self._header_length = None   # the request's meta v2_header_length
        self._places = None          # outputs the handler may write into shared memory

    def input(self, name):
        for t in self.inputs:
            if t.name == name:
                return t
        raise _V2NoInput("the request has no input %s (it has %s)"
                         % (_encode(name), ", ".join(t.name for t in self.inputs)
                            or "none"))

    def wants_binary(self, output_name):
        """True if the client asked for this output as binary data: the output's
        parameters.binary_data, else the request's parameters.binary_data_output."""
        for o in self.outputs:
            if isinstance(o, dict) and o.get("name") == output_name:
                p = o.get("parameters")
                if isinstance(p, dict) and "binary_data" in p:
                    return p["binary_data"] is True
                break
        return self.parameters.get("binary_data_output") is True

    def __repr__(self):
        return "v2.InferRequest(id=%r, inputs=%r, outputs=%r)" % (
            self.id, self.inputs, self.outputs)


def _v2_parse(payload, meta=None):
    """Parse a v2 infer request body -> v2.InferRequest.

    meta["v2_header_length"], when present, is the length of the JSON at the
    start of payload; binary tensors follow it. A body that cannot be read
    raises bw.Reject (which is also a ValueError): not retried, HTTP 422.
    """
    bad = _V2BadRequest
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError("v2.parse: payload must be bytes, not %s" % type(payload).__name__)
    meta = meta or {}
    view = memoryview(payload).cast("B")
    hlen = meta.get("v2_header_length")
    if hlen is None:
        head, rest = view, view[len(view):]
    else:
        if type(hlen) is not int or not 0 <= hlen <= len(view):
            raise bad("v2_header_length %s does not fit a body of %d bytes"
                      % (_encode(hlen), len(view)))
        head, rest = view[:hlen], view[hlen:]
    try:
        body = _decode(str(head, "utf-8"))
    except ValueError as e:
        raise bad("the v2 request is not JSON: %s" % e) from None
    if type(body) is not dict:
        raise bad("the v2 request is not a JSON object")
    rid = body.get("id")
    parameters = body.get("parameters", {})
    inputs = body.get("inputs")
    outputs = body.get("outputs", [])
    if type(parameters) is not dict:
        raise bad("the request's parameters is not an object")
    if type(inputs) is not list:
        raise bad("the request has no inputs list")
    if type(outputs) is not list or any(type(o) is not dict for o in outputs):
        raise bad("the request's outputs is not a list of objects")
    tensors, names, pos = [], set(), 0
    for i, inp in enumerate(inputs):
        if type(inp) is not dict or type(inp.get("name")) is not str:
            raise bad("input %d is not an object with a name" % i)
        name = inp["name"]
        dt = inp.get("datatype")
        shape = inp.get("shape")
        params = inp.get("parameters", {})
        if name in names:
            raise bad("input %s appears twice" % name)
        names.add(name)
        if dt not in _V2_DATATYPES:
            raise bad("input %s: unknown datatype %s" % (name, _encode(dt)))
        if (type(shape) is not list
                or any(type(d) is not int or d < 0 for d in shape)):
            raise bad("input %s: shape is not a list of non-negative integers" % name)
        if type(params) is not dict:
            raise bad("input %s: parameters is not an object" % name)
        count = _v2_count(shape)
        size = params.get("binary_data_size")
        if size is not None:
            if hlen is None:
                raise bad("input %s has binary_data_size but the request has no "
                          "Inference-Header-Content-Length" % name)
            if type(size) is not int or size < 0 or size > len(rest) - pos:
                raise bad("input %s: binary_data_size %s, %d bytes of binary data left"
                          % (name, _encode(size), len(rest) - pos))
            # A read-only view (views=True: a memfd's or the client's mapping)
            # is sliced, not copied; other payloads are copied, as they may change.
            raw = rest[pos:pos + size] if view.readonly and type(payload) is memoryview \
                else bytes(rest[pos:pos + size])
            pos += size
            params = {k: v for k, v in params.items() if k != "binary_data_size"}
            t = _V2Tensor._make(name, dt, shape, None, raw, params, True)
            if dt == "BYTES":   # split now: that is the check of its elements
                t._data = _v2_split_bytes(raw, count, name, bad)
            else:                # decoded when .data is first read
                _v2_check_raw(t, raw, count, bad)
        else:
            if "data" not in inp:
                raise bad("input %s has neither data nor binary_data_size" % name)
            data = inp["data"]
            data = _v2_flatten(data) if type(data) is list else [data]
            if len(data) != count:
                raise bad("input %s: %d values for shape %s (%d elements)"
                          % (name, len(data), shape, count))
            data = _v2_json_in(dt, data, name)
            t = _V2Tensor._make(name, dt, shape, data, None, params, False)
        tensors.append(t)
    if pos != len(rest):
        raise bad("%d bytes of binary data follow the inputs' binary_data_size total"
                  % (len(rest) - pos))
    req = _V2Request(rid, parameters, tensors, outputs, meta.get("model_name"))
    req._header_length = hlen
    req._places = _placing.get(id(payload)) if _placing else None
    return req


def _v2_response(outputs, request=None, parameters=None, model_version=None):
    """Build a v2 infer response -> (payload bytes, meta dict).

    outputs is a list of v2.Tensor. With request given, its "id" is echoed,
    only the outputs it names are sent (all when it names none), and each
    output is binary if request.wants_binary(name), else JSON. meta has
    content_type application/json and, when an output is binary,
    v2_header_length (None when all are JSON but the request was binary, to
    override the request's value). ValueError when an output's values do not
    match its shape or datatype, or cannot be written as JSON.
    """
    if isinstance(outputs, _V2Tensor):
        outputs = [outputs]
    wanted = None
    if request is not None and request.outputs:
        wanted = {o.get("name") for o in request.outputs if isinstance(o, dict)}
    body = {}
    if model_version is not None:
        body["model_version"] = str(model_version)
    if request is not None and request.id is not None:
        body["id"] = request.id
    if parameters:
        body["parameters"] = dict(parameters)
    outs, blobs, seen = [], [], set()
    places = getattr(request, "_places", None)
    for t in outputs:
        if not isinstance(t, _V2Tensor):
            raise TypeError("v2.response: outputs must be v2.Tensor, not %s"
                            % type(t).__name__)
        if t.name in seen:
            raise ValueError("v2.response: output %s appears twice" % t.name)
        seen.add(t.name)
        if wanted is not None and t.name not in wanted:
            continue
        count = _v2_count(t.shape)
        out = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        params = dict(t.parameters)
        if request is not None and request.wants_binary(t.name):
            raw = t._raw
            if raw is None:
                if len(t._data) != count:
                    raise ValueError("output %s: %d values for shape %s (%d elements)"
                                     % (t.name, len(t._data), t.shape, count))
                raw = _v2_encode(t, t._data)
            else:
                _v2_check_raw(t, raw, count, ValueError)
            # Into the client's output region, from where it is: no copy
            # into the answer (docs/protocol.md, "places").
            if not (places and _place(params, places.get(t.name), raw)):
                params["binary_data_size"] = len(raw)
                blobs.append(raw)
        else:
            params.pop("binary_data_size", None)
            if t._data is None:
                _v2_check_raw(t, t._raw, count, ValueError)
            data = t.data
            if len(data) != count:
                raise ValueError("output %s: %d values for shape %s (%d elements)"
                                 % (t.name, len(data), t.shape, count))
            out["data"] = _v2_json_out(t, data)
        if params:
            out["parameters"] = params
        outs.append(out)
    body["outputs"] = outs
    head = _encode_body(body).encode()
    meta = {"content_type": "application/json"}
    if not blobs:
        # baton merges a result's meta into the request's, which kept the
        # request's own v2_header_length: null overrides it, so that this
        # all-JSON answer is not cut where the request's JSON ended.
        if request is not None and getattr(request, "_header_length", None) is not None:
            meta["v2_header_length"] = None
        return head, meta
    meta["v2_header_length"] = len(head)
    blobs.insert(0, head)
    return b"".join(blobs), meta


class v2:
    """Open Inference Protocol (KServe v2) helpers: see the module docstring."""

    Tensor = _V2Tensor
    InferRequest = _V2Request
    parse = staticmethod(_v2_parse)
    response = staticmethod(_v2_response)

    def __new__(cls, *args, **kwargs):
        raise TypeError("baton_worker.v2 is a namespace, not a class to instantiate")


# Shown and pickled under the names users write.
_V2Tensor.__name__, _V2Tensor.__qualname__ = "Tensor", "v2.Tensor"
_V2Request.__name__, _V2Request.__qualname__ = "InferRequest", "v2.InferRequest"
