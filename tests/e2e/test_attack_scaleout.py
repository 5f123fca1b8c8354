"""Hostile or broken writers of the scale-out streams, found by attacking
them with redis-cli: payload references outside queue.shared_dir (which a
node used to read for a worker, send to the reply stream the entry named,
then delete), a shared file truncated under its entry, garbage entries
beside honest traffic, and an entry Redis refuses (its shared file used to
stay forever).  A real redis-server and one node, as
test_scaleout.py starts them."""
import pytest

from conftest import SLOW, wait_for
from test_scaleout import REDIS_SERVER, cluster, node_config, post, redis  # noqa: F401 (fixtures)

import os
import re
import threading

pytestmark = pytest.mark.skipif(not os.path.exists(REDIS_SERVER),
                                reason="redis-server is not installed (make test-deps)")


def replies(redis, origin):
    """The error sentences (field e, "" when none) of node origin's reply stream, by request id."""
    out, rec = {}, None
    for line in redis.cli("XRANGE", "t:r:" + origin, "-", "+").split("\n"):
        if re.fullmatch(r"\d+-\d+", line) and (rec is None or len(rec) % 2 == 0):
            rec = []
            continue
        if rec is not None:
            rec.append(line)
            f = dict(zip(rec[::2], rec[1::2]))
            if "r" in f and len(rec) % 2 == 0:
                out[f["r"]] = f.get("e", "")
    return out


def entry(redis, req, **fields):
    args = dict(v="1", o="evil", r=str(req), s="0", st="a", p="p", t="0")
    args.update(fields)
    flat = [x for kv in args.items() for x in kv]
    assert redis.cli("XADD", "t:q:a", "*", *flat)


def test_scaleout_payload_references_stay_inside_the_shared_directory(cluster, redis, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("SECRET CONTENT")
    (n1,) = cluster(1, a_replicas=1, pipeline=("a",),
                    queue_extra=", inline_max_bytes: 4096, shared_dir: %s" % shared)
    node_id = n1.status()["cluster"]["node"]
    # A stage entry naming a file outside the shared directory, directly or by "..".
    entry(redis, 1, l="14", ref=str(secret))
    entry(redis, 2, l="14", ref="%s/../secret" % shared)
    # A shared file shorter than its entry says (truncated after it was written).
    (shared / "cut").write_bytes(b"x" * 5000)
    entry(redis, 3, l="6000", ref=str(shared / "cut"))
    # Garbage beside them: missing fields, a bad length, metadata not an object.
    assert redis.cli("XADD", "t:q:a", "*", "foo", "bar")
    entry(redis, 4, l="3", b="abcd")
    entry(redis, 5, l="3", b="abc", m="[1]")
    assert redis.cli("XADD", "t:q:a", "*", "o", "first", "o", "evil", "r", "6")  # (leaked once)
    # A forged reply on the node's own reply stream naming a file to delete.
    post(n1.port, b"first")  # the reply stream exists once a request went through
    assert redis.cli("XADD", "t:r:" + node_id, "*", "v", "1", "o", node_id, "r", "999", "s", "0",
                     "n", "evil", "c", "0", "l", "14", "ref", str(secret))
    wait_for(lambda: len(replies(redis, "evil")) >= 6, 20 * SLOW, what="answers to evil's entries")
    got = replies(redis, "evil")
    assert "not a file of queue.shared_dir" in got["1"], got
    assert "not a file of queue.shared_dir" in got["2"], got
    assert "5000 bytes, its entry says 6000" in got["3"], got
    assert "size is not its length" in got["4"] and "not a JSON object" in got["5"], got
    assert "a required field (missing)" in got["6"], got
    assert "SECRET" not in redis.cli("XRANGE", "t:r:evil", "-", "+")
    wait_for(lambda: any("refused a payload reference" in line and "stream=t:r:" in line
                         for line in n1.log().splitlines()), 10 * SLOW,
             what="the forged reply to be refused")
    assert secret.read_text() == "SECRET CONTENT"
    # And the node serves on, through Redis and through the shared directory.
    status, body = post(n1.port, b"after")
    assert status == 200 and body.startswith(b"after n1:a:"), body
    big = b"B" * 10000
    status, body = post(n1.port, big)
    assert status == 200 and body.startswith(big), body[:100]
    wait_for(lambda: not os.listdir(str(shared)), 10 * SLOW, what="the shared files to go")
    # Redis refusing the entry (out of memory): the payload's file written for
    # it goes too, since no entry names it (each refused request left one).
    redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis.cli("CONFIG", "SET", "maxmemory", "1")
    status, body = post(n1.port, big)
    assert status == 503 and b"refused the request's entry" in body, body
    redis.cli("CONFIG", "SET", "maxmemory", "0")
    assert os.listdir(str(shared)) == []


def test_scaleout_redis_losing_its_data_leaves_no_shared_files(cluster, redis, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (n1,) = cluster(1, a_replicas=1, pipeline=("a",),
                    queue_extra=", inline_max_bytes: 4096, shared_dir: %s" % shared)
    # Large requests in the cluster's queue (one running, the others waiting),
    # their payloads in the shared directory; then Redis restarts empty.
    big = b"slow:3000 " + b"A" * 10000
    results = []
    threads = [threading.Thread(target=lambda: results.append(post(n1.port, big)))
               for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(os.listdir(str(shared))) == 3, 10 * SLOW, what="three shared files")
    redis.stop()
    redis.start()
    for t in threads:
        t.join()
    assert [s for s, _ in results] == [503] * 3, results
    # The origin answered them: no entry will ever name their files again.
    assert os.listdir(str(shared)) == []
    wait_for(lambda: post(n1.port, b"again")[0] == 200, 20 * SLOW, what="the node to reconnect")


def test_scaleout_a_flood_of_garbage_entries_is_counted_not_logged_line_by_line(cluster, redis):
    """A writer that floods a stage's stream with entries no node can read:
    each is dropped and counted (baton_cluster_bad_entries_total), but the
    log gets at most ten lines a second about them and one that says how
    many it left out; honest requests are served meanwhile."""
    (n1,) = cluster(1, a_replicas=1, pipeline=("a",))
    script = "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'foo', 'bar') end"
    redis.cli("EVAL", script, "1", "t:q:a", "400")

    def bad():
        m = re.search(r"^baton_cluster_bad_entries_total (\d+)$", n1.get("/metrics").body.decode(),
                      re.M)
        return int(m.group(1)) if m else 0
    wait_for(lambda: bad() >= 400, 30 * SLOW, what="the 400 bad entries counted")
    wait_for(lambda: "left out warnings about bad entries" in n1.log(), 10 * SLOW,
             what="the line that sums up the warnings left out")
    log = n1.log().splitlines()
    dropped = [line for line in log if "dropped a bad entry" in line]
    left_out = sum(int(re.search(r"count=(\d+)", line).group(1))
                   for line in log if "left out warnings about bad entries" in line)
    assert 1 <= len(dropped) < 100, len(dropped)
    assert len(dropped) + left_out == 400, (len(dropped), left_out)
    status, body = post(n1.port, b"after")
    assert status == 200 and body.startswith(b"after n1:a:"), body
