"""Security: bearer-token auth on everything but the health probes, replicas
started as another user, loopback by default, names that cannot escape."""
import os
import pwd
import shutil
import socket
import subprocess

import pytest

from conftest import (BATON, FAKE, PYTHON, SDK_PY, cannot_run, config, fake_stage, free_port,
                      needs_root, SLOW, wait_for)


def auth_config(tmp_path, token="s3cret-token-0123456789"):
    (tmp_path / "token").write_text(token + "\n")
    return "auth: {token_file: token}\n" + config(fake_stage("w"), {"p": ["w"]})


def test_bearer_token_is_required_except_for_health(baton, tmp_path):
    token = "s3cret-token-0123456789"
    b = baton(auth_config(tmp_path, token), wait_ready=False)
    b.token = None
    assert b.get("/v2/health/live").status == 200
    b.token = token
    b.wait_ready()
    b.token = None
    for method, path in [("GET", "/v1/status"), ("GET", "/metrics"), ("GET", "/v2"),
                         ("GET", "/v2/models/p"), ("POST", "/v1/pipelines/p"),
                         ("POST", "/v2/models/p/infer"), ("POST", "/v1/stages/w/restart")]:
        r = b.request(method, path, b"x" if method == "POST" else None)
        assert r.status == 401, (path, r)
        assert r.headers["www-authenticate"].startswith("Bearer")
        for bad in ("Bearer wrong-token-0123456789", "Bearer " + token + "x",
                    "Bearer " + token[:-1], "Basic " + token, token):
            assert b.request(method, path, b"x" if method == "POST" else None,
                             headers={"Authorization": bad}).status == 401, (path, bad)
    assert b.get("/v2/health/ready").status == 200
    assert b.get("/v1/status", headers={"Authorization": "Bearer " + token}).json()["stages"]["w"]
    r = b.post("p", "hello", headers={"Authorization": "Bearer " + token})
    assert r.status == 200 and r.body == b"hello"
    # The CLI reads the same token file.
    out = subprocess.run([BATON, "status", "--url", "http://127.0.0.1:%d" % b.port,
                          "--token-file", str(tmp_path / "token")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "STAGE" in out.stdout
    env = {k: v for k, v in os.environ.items() if k != "BATON_TOKEN_FILE"}
    out = subprocess.run([BATON, "status", "--url", "http://127.0.0.1:%d" % b.port],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 1 and "needs a token: --token-file" in out.stderr, out.stderr
    (tmp_path / "wrong").write_text("wrong-token-0123456789\n")
    out = subprocess.run([BATON, "status", "--url", "http://127.0.0.1:%d" % b.port,
                          "--token-file", str(tmp_path / "wrong")],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 1 and "the token was refused" in out.stderr, out.stderr
    b.token = token
    assert b.stop() == 0


def test_short_or_missing_token_file_is_a_config_error(tmp_path):
    (tmp_path / "short").write_text("abc\n")
    cfg = tmp_path / "c.yaml"
    for line in ("auth: {token_file: short}", "auth: {token_file: missing}"):
        cfg.write_text(line + "\n" + config(fake_stage("w"), {"p": ["w"]}))
        r = subprocess.run([BATON, "check", str(cfg)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "token_file" in r.stderr and ":1:7:" in r.stderr


def reachable_as(user, paths):
    """Whether user (primary group only, as baton starts it) can read every path."""
    pw = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            os._exit(0 if all(os.access(p, os.R_OK) for p in paths) else 1)
        except BaseException:
            os._exit(2)
    return os.waitpid(pid, 0)[1] == 0


def test_replicas_run_as_the_configured_user(baton):
    needs_root("switching users needs root")
    if not reachable_as("nobody", [BATON, FAKE, SDK_PY]):
        cannot_run("user nobody cannot reach this checkout (e.g. under a 0700 /root)")
    nobody = pwd.getpwnam("nobody")
    b = baton(config(fake_stage("w", user="nobody"), {"p": ["w"]}))
    pid = b.pids("w")[0]
    status = open("/proc/%d/status" % pid).read()
    uid_line = [l for l in status.splitlines() if l.startswith("Uid:")][0].split()
    gid_line = [l for l in status.splitlines() if l.startswith("Gid:")][0].split()
    groups = [l for l in status.splitlines() if l.startswith("Groups:")][0].split()[1:]
    assert set(uid_line[1:]) == {str(nobody.pw_uid)}
    assert set(gid_line[1:]) == {str(nobody.pw_gid)}
    assert groups == []  # root's supplementary groups were dropped
    assert b.post("p", "as nobody").body == b"as nobody"
    # It still dies with baton: the death signal survives the user switch.
    b.proc.kill()
    b.proc.wait(10)
    from conftest import pid_alive, wait_for
    wait_for(lambda: not pid_alive(pid), 2, what="the worker to die with baton")


def test_group_overrides_the_users_primary_group(baton):
    needs_root("switching users needs root")
    if not reachable_as("nobody", [BATON, FAKE, SDK_PY]):
        cannot_run("user nobody cannot reach this checkout (e.g. under a 0700 /root)")
    import grp
    daemon_gid = grp.getgrnam("daemon").gr_gid
    b = baton(config(fake_stage("w", user="nobody", group="daemon"), {"p": ["w"]}))
    status = open("/proc/%d/status" % b.pids("w")[0]).read()
    gid_line = [l for l in status.splitlines() if l.startswith("Gid:")][0].split()
    assert set(gid_line[1:]) == {str(daemon_gid)}
    assert b.post("p", "as nobody:daemon").status == 200
    assert b.stop() == 0


def test_user_who_cannot_reach_the_worker_is_a_clear_error(tmp_path):
    needs_root("switching users needs root")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    worker = private / "worker.py"
    worker.write_text(open(FAKE).read())
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stages:\n  w:\n    command: [%s, %s]\n    user: nobody\n"
                   "pipelines:\n  p: [w]\n" % (PYTHON, worker))
    r = subprocess.run([BATON, "serve", str(cfg), "--listen", "127.0.0.1:%d" % free_port()],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert ":2:3:" in r.stderr and "cannot reach '%s'" % worker in r.stderr, r.stderr
    assert "does not allow it" in r.stderr, r.stderr
    r = subprocess.run([BATON, "check", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "cannot reach '%s'" % worker in r.stderr, r.stderr


def test_unknown_user_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config(fake_stage("w", user="no-such-user-here"), {"p": ["w"]}))
    r = subprocess.run([BATON, "check", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no-such-user-here" in r.stderr


# Run inside a network namespace of its own, so that the default port
# (8080) is free whatever else runs on this machine.
LISTEN_PROBE = r"""
import fcntl, socket, struct, subprocess, sys, time
# lo starts down in a new namespace: up, as `ip link set lo up` would (SIOCSIFFLAGS).
s = socket.socket()
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
p = subprocess.Popen([sys.argv[1], "serve", sys.argv[2]], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
try:
    end = time.monotonic() + 30
    while True:
        with open("/proc/net/tcp") as f:
            rows = [l.split() for l in f.readlines()[1:]]
        listening = [r[1] for r in rows if r[3] == "0A"]
        if listening or time.monotonic() > end or p.poll() is not None:
            break
        time.sleep(0.05)
    print(" ".join(listening))
finally:
    p.terminate()
    p.wait(30)
"""


def test_default_listen_is_loopback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config(fake_stage("w"), {"p": ["w"]}))
    r = subprocess.run([BATON, "check", str(cfg)], capture_output=True, text=True, timeout=30)
    assert "listen:  127.0.0.1:8080" in r.stdout
    assert "auth:    none" in r.stdout
    # And serve without --listen binds exactly that: 127.0.0.1:8080 in
    # /proc/net/tcp's hex (not 00000000, every address).
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    if not shutil.which("unshare") or subprocess.run(unshare + ["true"]).returncode != 0:
        cannot_run("no network namespace to run serve on its default port in")
    r = subprocess.run(unshare + [PYTHON, "-c", LISTEN_PROBE, BATON, str(cfg)],
                       capture_output=True, text=True, timeout=60 * SLOW)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0100007F:1F90"], r.stdout


def test_names_in_urls_cannot_escape(baton):
    b = baton(config(fake_stage("w"), {"p": ["w"]}))
    for path in ("/v1/pipelines/../v1/status", "/v1/pipelines/p/../../etc/passwd",
                 "/v1/pipelines/%2e%2e%2fetc", "/v1/pipelines/p%00x", "/v1/pipelines/%FF%FE",
                 "/v2/models/..%2f..%2fetc/infer"):
        r = b.request("POST", path, b"x")
        assert r.status in (400, 404), (path, r)
    assert b.post("p", "still fine").status == 200
    assert b.stop() == 0


def listening_sockets(pid):
    """The (address, port) pairs pid listens on, read from /proc/net/tcp{,6}."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:   # 0A: LISTEN
                    addr, port = cols[1].split(":")
                    found.append((addr, int(port, 16)))
    return found


@pytest.mark.parametrize("host,expect", [("localhost", "0100007F"),
                                         ("127.0.0.1", "0100007F")])
def test_listen_flag_binds_only_the_address_given(tmp_path, host, expect):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config(fake_stage("w"), {"p": ["w"]}))
    port = free_port()
    proc = subprocess.Popen([BATON, "serve", str(cfg), "--listen", "%s:%d" % (host, port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: listening_sockets(proc.pid), 20, what="baton to listen")
        assert listening_sockets(proc.pid) == [(expect, port)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_an_ipv6_listen_address_is_logged_as_a_url_takes_it(tmp_path):
    """`[::1]:PORT`, not `::1:PORT`: the logged address pastes into curl."""
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        cannot_run("no IPv6 on this machine")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config(fake_stage("w"), {"p": ["w"]}))
    log = tmp_path / "serve.log"
    port = free_port()
    with open(log, "wb") as err:
        proc = subprocess.Popen([BATON, "serve", str(cfg), "--listen", "[::1]:%d" % port],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        want = b"msg=listening addr=[::1]:%d " % port
        wait_for(lambda: proc.poll() is not None or want in log.read_bytes(), 20,
                 what="baton to log that it listens")
        assert want in log.read_bytes(), log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("listen", ["example.com:8080", "[::1:8080", "0.0.0:80", ":8080",
                                    "127.0.0.1:http"])
def test_listen_flag_refuses_what_is_not_an_address(tmp_path, listen):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config(fake_stage("w"), {"p": ["w"]}))
    r = subprocess.run([BATON, "serve", str(cfg), "--listen", listen],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--listen" in r.stderr, r.stderr


def test_spawn_files_mode_as_another_user_can_use_its_files(baton):
    needs_root("switching users needs root")
    # The per-request directory and its input file belong to the stage's
    # user: a script running as nobody reads {input} and writes {output}.
    seed000 = os.path.join(os.path.dirname(FAKE), "seed000_script.py")
    if not reachable_as("nobody", [BATON, seed000]):
        cannot_run("user nobody cannot reach this checkout (e.g. under a 0700 /root)")
    b = baton("stages:\n  legacy:\n    mode: spawn\n    user: nobody\n"
              "    command: [/usr/bin/python3, %s, --input, '{input}', --output, '{output}']\n"
              "pipelines:\n  p: [legacy]\n" % seed000)
    r = b.post("p", '{"action": "ok"}')
    assert r.status == 200 and r.json()["status"] == "ok", r
    assert b.stop() == 0


def test_spawn_output_linked_to_a_root_only_file_is_not_read(baton):
    needs_root("switching users needs root")
    # The request's directory is the stage user's, but baton reads the
    # output as root: a link (or a file owned by anyone else) is refused.
    if not reachable_as("nobody", [BATON]):
        cannot_run("user nobody cannot reach this checkout (e.g. under a 0700 /root)")
    b = baton("stages:\n  legacy:\n    mode: spawn\n    user: nobody\n    retries: 0\n"
              "    command: [/bin/sh, -c, 'ln -s /etc/shadow \"$1\"', sh, '{output}', '{input}']\n"
              "pipelines:\n  p: [legacy]\n")
    r = b.post("p", "x")
    assert r.status == 500 and r.json()["code"] == "worker_error", r
    assert "root:" not in r.body.decode()
    assert b.stop() == 0


def test_bearer_scheme_is_case_insensitive(baton, tmp_path):
    token = "s3cret-token-0123456789"
    b = baton(auth_config(tmp_path, token), wait_ready=False)
    b.token = token
    b.wait_ready()
    b.token = None
    # RFC 7235: the scheme is case-insensitive; one or more spaces follow it.
    for good in ("bearer ", "BEARER ", "bEaReR  "):
        r = b.get("/v1/status", headers={"Authorization": good + token})
        assert r.status == 200, good
    for bad in ("Bearer" + token, "Bearerx " + token, "bearer " + token.upper()):
        assert b.get("/v1/status", headers={"Authorization": bad}).status == 401, bad
    b.token = token
    assert b.stop() == 0
