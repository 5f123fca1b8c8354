"""`baton serve` under systemd's Type=notify, with the manager's side played
by a real datagram socket: READY=1 only once every stage has its initial
replicas ready, STATUS= lines, WATCHDOG=1 pings, STOPPING=1 at the drain,
and workers that never see the notify socket."""
import json
import os
import socket
import threading

from conftest import FAKE, PYTHON, SDK_PY, config, fake_stage, wait_for


class Manager:
    """The service manager's end: collects the datagrams baton sends."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages = []
        self.done = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.done:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def lines(self):
        return [line for m in list(self.messages) for line in m.split("\n")]

    def close(self):
        self.done = True
        self.thread.join(5)
        self.sock.close()


def test_ready_status_watchdog_and_stopping_reach_the_notify_socket(baton, tmp_path):
    gate = tmp_path / "gate"
    manager = Manager(str(tmp_path / "notify.sock"))
    # Replicas load until the test opens the gate, so "not ready yet" is a
    # state the test controls rather than a race.
    cfg = config(f"""  slow:
    command: [sh, -c, 'while [ ! -e {gate} ]; do sleep 0.05; done; exec {PYTHON} {FAKE}']
    env: {{PYTHONPATH: {SDK_PY}}}
    replicas: {{initial: 2}}
""" + fake_stage("fast"), {"p": ["slow", "fast"]})
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000")
    try:
        b = baton(cfg, wait_ready=False, env=env)
        wait_for(lambda: "STATUS=starting: slow 0/2 ready, fast 1/1 ready" in manager.lines(), 30,
                 what="a STATUS line while slow loads: %r" % manager.lines())
        assert "READY=1" not in manager.lines()
        gate.write_text("")
        wait_for(lambda: "READY=1" in manager.lines(), 30, what="READY=1: %r" % manager.lines())
        # Ready means every stage had its replicas ready when it was sent.
        assert "STATUS=serving: slow 2/2 ready, fast 1/1 ready" in manager.lines()
        wait_for(lambda: manager.lines().count("WATCHDOG=1") >= 3, 30, what="watchdog pings")
        assert manager.lines().count("READY=1") == 1
        # Workers do not inherit the manager's variables.
        seen = json.loads(b.post("p", b"env").body.decode().split("\n")[0])
        blob = json.dumps(seen)
        assert "NOTIFY_SOCKET" not in blob and "WATCHDOG_USEC" not in blob, seen
        b.stop()
        assert "STOPPING=1" in manager.lines()
    finally:
        manager.close()


def test_an_abstract_notify_socket_works_too(baton, tmp_path):
    name = "baton-test-%d-%s" % (os.getpid(), tmp_path.name)
    manager = Manager("\0" + name)
    try:
        baton(config(fake_stage("w"), {"p": ["w"]}),
              env=dict(os.environ, NOTIFY_SOCKET="@" + name))
        wait_for(lambda: "READY=1" in manager.lines(), 30, what="READY=1: %r" % manager.lines())
        # No WatchdogSec: no pings.
        assert "WATCHDOG=1" not in manager.lines()
    finally:
        manager.close()
