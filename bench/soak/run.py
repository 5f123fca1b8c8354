#!/usr/bin/python3
"""bench/soak: baton under an idle-connection flood, slow readers and
abandoned uploads (issue 14, items 2 and 3), measured.

baton serves one stage of C echo workers (bench/hop/echo.c, 2 replicas) under a
descriptor limit of 1024 (systemd's default soft limit), with
http.write_timeout_s 5 and http.idle_timeout_s 10.  Four well-behaved
clients, each on its own keep-alive connection opened beforehand, post
1 KiB requests the whole time.  Three phases:

  before   the clients alone;
  attack   meanwhile: SLOW clients post 5 MiB and never read the answer,
           UPLOADS clients announce 50 MiB and stop after 1 MiB, FLOOD
           connections are opened and send nothing, and one replica is
           killed with SIGKILL;
  after    the attackers have gone (their sockets closed).

Prints, per phase: baton's RSS (before, peak, after), what the
well-behaved clients got (requests, errors, p50/p99), what the attackers
got (answers by status), and the state of the replicas after the attack.

    /usr/bin/python3 bench/soak/run.py --build build [--seconds 15] [--flood 1100]
"""
import argparse
import http.client
import json
import multiprocessing
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
MIB = 1 << 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def status(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/v1/status" % port, timeout=60) as r:
        return json.loads(r.read())


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def start(build, tmp):
    port = free_port()
    echo = os.path.join(build, "bench", "echo-c")  # bench/hop/echo.c
    cfg = os.path.join(tmp, "soak.yaml")
    with open(cfg, "w") as f:
        f.write("log_level: info\n"
                "http: {write_timeout_s: 5, idle_timeout_s: 10}\n"
                "stages:\n  echo:\n    command: [%s]\n"
                "    replicas: 2\n    max_ongoing: 4\n"
                "    restart: {backoff_ms: 50, backoff_max_ms: 500}\n"
                "pipelines:\n  p: [echo]\n" % echo)
    log = open(cfg + ".log", "wb")
    proc = subprocess.Popen(["prlimit", "--nofile=1024:1024", "--",
                             os.path.join(build, "baton"), "serve", cfg, "--listen",
                             "127.0.0.1:%d" % port], stdout=log, stderr=subprocess.STDOUT)
    end = time.monotonic() + 30
    while True:
        try:
            doc = status(port)
            if all(r["state"] == "ready" for s in doc["stages"].values() for r in s["replicas"]):
                return proc, port, cfg + ".log"
        except OSError:
            pass
        if time.monotonic() > end:
            sys.exit("baton did not start")
        time.sleep(0.05)


class Clients:
    """Well-behaved clients: keep-alive connections, 1 KiB requests."""

    def __init__(self, port, n):
        self.port, self.phase, self.stop = port, "before", threading.Event()
        self.lat = {}
        self.errors = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run) for _ in range(n)]
        for t in self.threads:
            t.start()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        body = b"x" * 1024
        while not self.stop.is_set():
            phase = self.phase
            t0 = time.monotonic()
            try:
                conn.request("POST", "/v1/pipelines/p", body)
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                ok = False
            with self.lock:
                if ok:
                    self.lat.setdefault(phase, []).append(time.monotonic() - t0)
                else:
                    self.errors[phase] = self.errors.get(phase, 0) + 1
        conn.close()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()


def slow_reader(port, sockets, outcomes, lock):
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(60)
        s.connect(("127.0.0.1", port))
        with lock:
            sockets.append(s)
        s.sendall(b"POST /v1/pipelines/p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                  % (5 * MIB) + b"A" * (5 * MIB))
        head = s.recv(64)  # the status line, then nothing more is read
        key = head.split(b" ")[1].decode() if head.startswith(b"HTTP/1.1 ") else "closed"
    except OSError as e:
        key = "%s(%s)" % (type(e).__name__, getattr(e, "errno", ""))
    with lock:
        outcomes[key] = outcomes.get(key, 0) + 1


def abandoned_upload(port, sockets, lock):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        with lock:
            sockets.append(s)
        s.sendall(b"POST /v1/pipelines/p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                  % (50 * MIB) + b"U" * MIB)
    except OSError:
        pass


def attack(port, a, ready, leave, report):
    """The attackers, in their own process: holds everything until leave is set."""
    lock, sockets, outcomes = threading.Lock(), [], {}
    threads = [threading.Thread(target=slow_reader, args=(port, sockets, outcomes, lock))
               for _ in range(a.slow)]
    threads += [threading.Thread(target=abandoned_upload, args=(port, sockets, lock))
                for _ in range(a.uploads)]
    for t in threads:
        t.start()
    flood = []
    for _ in range(a.flood):
        try:
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        except OSError:
            break
    ready.set()
    leave.wait()
    for s in flood + sockets:
        s.close()
    for t in threads:
        t.join(120)
    report.put((len(flood), outcomes))


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))] * 1000 if v else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--flood", type=int, default=1100)
    ap.add_argument("--slow", type=int, default=200)
    ap.add_argument("--uploads", type=int, default=30)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.flood + a.slow + a.uploads + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    tmp = tempfile.mkdtemp(prefix="baton-soak-")
    proc, port, logpath = start(os.path.abspath(a.build), tmp)
    rss = {"before": rss_mib(proc.pid)}
    clients = Clients(port, 4)
    time.sleep(a.seconds)

    clients.phase = "attack"
    lock, sockets, outcomes = threading.Lock(), [], {}
    peak = [rss["before"]]
    sampling = threading.Event()

    def sampler():
        while not sampling.is_set():
            peak[0] = max(peak[0], rss_mib(proc.pid))
            time.sleep(0.05)
    st = threading.Thread(target=sampler)
    st.start()
    # The attackers run in a process of their own: in this one they would
    # compete with the well-behaved clients for the interpreter lock.
    ready, leave, report = multiprocessing.Event(), multiprocessing.Event(), multiprocessing.Queue()
    attacker = multiprocessing.Process(target=attack, args=(port, a, ready, leave, report))
    attacker.start()
    ready.wait(60)
    victim = None
    try:
        pids = [int(x) for x in subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
        victim = pids[0] if pids else None
        if victim:
            os.kill(victim, signal.SIGKILL)
    except (ValueError, ProcessLookupError):
        pass
    time.sleep(a.seconds)
    clients.phase = "after"
    leave.set()
    opened, outcomes = report.get(timeout=180)
    attacker.join(60)
    time.sleep(a.seconds)
    sampling.set()
    st.join()
    rss["peak"] = peak[0]
    rss["after"] = rss_mib(proc.pid)
    clients.finish()
    doc = status(port)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)

    print("bench/soak: %s, %d cores, %s; baton under prlimit --nofile=1024:1024" %
          (platform.node(), os.cpu_count(), platform.platform()))
    print("attack: %d idle connections, %d slow readers of 5 MiB answers, %d abandoned "
          "50 MiB uploads, 1 replica killed (pid %s); %.0f s per phase" %
          (a.flood, a.slow, a.uploads, victim, a.seconds))
    print("flood connections opened: %d" % opened)
    print("baton RSS MiB: before %.1f  peak %.1f  after %.1f" %
          (rss["before"], rss["peak"], rss["after"]))
    print("%-8s %9s %7s %9s %9s" % ("phase", "requests", "errors", "p50 ms", "p99 ms"))
    for ph in ("before", "attack", "after"):
        lat = clients.lat.get(ph, [])
        print("%-8s %9d %7d %9.1f %9.1f" % (ph, len(lat), clients.errors.get(ph, 0),
                                            pct(lat, 0.5), pct(lat, 0.99)))
    print("slow readers' answers by status: %s" % json.dumps(outcomes, sort_keys=True))
    reps = doc["stages"]["echo"]["replicas"]
    print("replicas after: %s; max_connections in force %s" %
          (", ".join("%s(failures %d)" % (r["state"], r["failures"]) for r in reps),
           doc.get("http", {}).get("max_connections")))
    with open(logpath, "rb") as f:
        log = f.read().decode("utf-8", "replace")
    print("log: %d slow readers dropped, %d spawn retries for lack of resources" %
          (log.count("client did not take its answer in time"),
           log.count("for lack of resources")))


if __name__ == "__main__":
    main()
