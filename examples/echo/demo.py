#!/usr/bin/python3
"""`make demo`: sets up the echo example (its venv), starts `baton serve`
on it, sends it work, kills a worker mid-flight to show the restart, and
stops it with SIGTERM.  Everything it does is printed."""
import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def call(port, method, path, body=None, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, body=body)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def wait(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("demo: timed out waiting for " + what)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(HERE, "..", "..", "build"))
    args = ap.parse_args()
    baton = os.path.join(args.build, "baton")
    venv = os.path.join(HERE, ".venv-upper")
    if not os.path.isdir(os.path.join(venv, "bin")):
        print("$ python3 -m venv --without-pip examples/echo/.venv-upper")
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", venv], check=True)
    config = os.path.join(HERE, "baton.yaml")
    print("$ baton check examples/echo/baton.yaml")
    subprocess.run([baton, "check", config], check=True)
    port = free_port()
    print("\n$ baton serve examples/echo/baton.yaml --listen 127.0.0.1:%d" % port)
    proc = subprocess.Popen([baton, "serve", config, "--listen", "127.0.0.1:%d" % port])
    try:
        wait(lambda: call(port, "GET", "/v2/health/ready")[0] == 200, 30, "baton to be ready")
        print()
        for text in ["hello baton", "persistent workers", "no request lost"]:
            status, body = call(port, "POST", "/v1/pipelines/echo", text.encode())
            print("POST /v1/pipelines/echo %-22r -> %d %r" % (text, status, body.decode()))

        doc = json.loads(call(port, "GET", "/v1/status")[1])
        victim = doc["stages"]["upper"]["replicas"][0]["pid"]
        print("\nkill -9 %d (a replica of 'upper') while requests are flowing..." % victim)
        results = []
        def load():
            for i in range(20):
                results.append(call(port, "POST", "/v1/pipelines/echo", b"request %d" % i)[0])
        t = threading.Thread(target=load)
        t.start()
        os.kill(victim, signal.SIGKILL)
        t.join(60)
        print("20 requests during the kill: %d answered 200" % results.count(200))
        time.sleep(0.5)
        print("\n$ baton status")
        subprocess.run([baton, "status", "--url", "http://127.0.0.1:%d" % port], check=True)
    finally:
        print("\nSIGTERM to baton (pid %d)" % proc.pid)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        print("baton exited with status %d" % code)
    return 0 if code == 0 and results.count(200) == 20 else 1


if __name__ == "__main__":
    sys.exit(main())
