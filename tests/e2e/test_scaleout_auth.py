"""Scale-out against a Redis that wants a password (docs/scaleout.md):
`queue.password_file` (the default user's password, `requirepass`) and
`queue.user` (an ACL user) let nodes in; a wrong or missing password is a
start error that names the config's line and never prints the password;
a password in the url is refused for the same reason.  A real
redis-server, started here with the passwords set here."""
import subprocess

import pytest

from conftest import BATON, SLOW, Baton, free_port, wait_for
from test_scaleout import REDIS_SERVER, Redis, node_config, pending

pytestmark = pytest.mark.skipif(not __import__("os").path.exists(REDIS_SERVER),
                                reason="redis-server is not installed (make test-deps)")

DEFAULT_PW = "s3cret pass%word"  # a space and a % on purpose: sent as one argument
ACL_PW = "acl-Pw-4-baton"


@pytest.fixture
def locked_redis(tmp_path):
    r = Redis(tmp_path, password=DEFAULT_PW,
              args=["--requirepass", DEFAULT_PW,
                    "--user", "batonuser", "on", ">" + ACL_PW, "~*", "&*", "+@all"]).start()
    yield r
    r.stop()


def password_file(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text + "\n")
    p.chmod(0o600)
    return str(p)


def serve_and_check(tmp_path, redis, node, queue_extra):
    b = Baton(tmp_path, node_config(redis, node, a_replicas=1, queue_extra=queue_extra),
              name=node)
    try:
        b.start()
        for i in range(5):
            r = b.post("p", "m%d" % i)
            assert r.status == 200, (r.status, r.body, b.log_tail())
            assert r.body.split(b" ")[0] == b"m%d" % i
        doc = b.status()["cluster"]
        # The work really went through Redis, on connections that were let in.
        assert doc["connected"] and doc["requests"]["answered"] >= 5, doc
        wait_for(lambda: pending(redis, "a") == 0, 10 * SLOW, what="nothing pending")
        status_text = b.get("/v1/status").body.decode()
        assert DEFAULT_PW not in status_text and ACL_PW not in status_text
        assert b.stop() == 0
        log = b.log()
        assert DEFAULT_PW not in log and ACL_PW not in log
    finally:
        b.cleanup()


def test_nodes_authenticate_with_a_password_file_and_an_acl_user(tmp_path, locked_redis):
    pw = password_file(tmp_path, "default.pw", DEFAULT_PW)
    serve_and_check(tmp_path, locked_redis, "n1", ", password_file: '%s'" % pw)
    acl = password_file(tmp_path, "acl.pw", ACL_PW)
    serve_and_check(tmp_path, locked_redis, "n2", ", user: batonuser, password_file: '%s'" % acl)


def start_error(tmp_path, redis, queue_extra):
    path = str(tmp_path / "c.yaml")
    with open(path, "w") as f:
        f.write(node_config(redis, "n1", queue_extra=queue_extra))
    r = subprocess.run([BATON, "serve", path, "--listen", "127.0.0.1:%d" % free_port()],
                       capture_output=True, timeout=30 * SLOW)
    return path, r.returncode, r.stdout.decode() + r.stderr.decode()


def test_wrong_or_missing_password_is_a_start_error_that_shows_no_password(tmp_path,
                                                                          locked_redis):
    wrong = "not-the-password"
    path, code, err = start_error(tmp_path, locked_redis,
                                  ", password_file: '%s'" % password_file(tmp_path, "w", wrong))
    assert code == 1, err
    assert "%s:1:" % path in err and "refused queue.password_file's password" in err, err
    assert wrong not in err and DEFAULT_PW not in err, err

    path, code, err = start_error(tmp_path, locked_redis, "")
    assert code == 1, err
    assert "%s:1:" % path in err and "NOAUTH" in err and "queue.password_file" in err, err

    # The ACL user's password is not the default user's.
    path, code, err = start_error(
        tmp_path, locked_redis,
        ", user: batonuser, password_file: '%s'" % password_file(tmp_path, "d", DEFAULT_PW))
    assert code == 1 and "for user 'batonuser'" in err, err
    assert DEFAULT_PW not in err, err


def test_password_settings_that_cannot_work_are_config_errors(tmp_path):
    class Url:
        url = "redis://:hunter2hunter2@127.0.0.1:%d/0" % free_port()
    path, code, err = start_error(tmp_path, Url, "")
    assert code == 2 and "%s:1:" % path in err and "queue.password_file" in err, err
    assert "hunter2hunter2" in err  # the url as written: it is the user's own config line

    class Plain:
        url = "redis://127.0.0.1:%d/0" % free_port()
    path, code, err = start_error(tmp_path, Plain, ", user: someone")
    assert code == 2 and "'queue.user' needs 'queue.password_file'" in err, err
    path, code, err = start_error(tmp_path, Plain,
                                  ", password_file: '%s'" % (tmp_path / "absent.pw"))
    assert code == 2 and "cannot read queue.password_file" in err, err
    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    path, code, err = start_error(tmp_path, Plain, ", password_file: '%s'" % empty)
    assert code == 2 and "must hold the password on its first line" in err, err


def test_a_password_changed_while_running_is_reported_and_recovered(tmp_path, locked_redis):
    pw = password_file(tmp_path, "default.pw", DEFAULT_PW)
    b = Baton(tmp_path, node_config(locked_redis, "n1", a_replicas=1,
                                    queue_extra=", password_file: '%s'" % pw), name="n1")
    try:
        b.start()
        assert b.post("p", "before").status == 200
        # The server's password changes and baton's connections are dropped:
        # every reconnection is refused, which status says, and requests
        # are answered at once instead of waiting on a Redis that refuses.
        assert locked_redis.cli("CONFIG", "SET", "requirepass", "another-one") == "OK"
        locked_redis.password = "another-one"
        locked_redis.cli("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

        def refused():
            doc = b.status()["cluster"]
            return not doc["connected"] and "password" in (doc["error"] or "")
        wait_for(refused, 30 * SLOW, interval=0.1,
                 what="status to say Redis refused the password\n" + b.log_tail())
        r = b.post("p", "during")
        assert r.status == 503 and "redis" in r.json()["error"], (r.status, r.body)
        assert "refused queue.password_file's password" in b.log()
        # Back to the password of the file: the node comes back by itself.
        locked_redis.cli("CONFIG", "SET", "requirepass", DEFAULT_PW)
        locked_redis.password = DEFAULT_PW
        wait_for(lambda: b.post("p", "after").status == 200, 30 * SLOW, interval=0.2,
                 what="the node to reconnect\n" + b.log_tail())
        assert b.stop() == 0
    finally:
        b.cleanup()
