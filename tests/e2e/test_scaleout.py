"""Several baton nodes sharing stage queues through Redis Streams
(docs/scaleout.md): a real redis-server started here on a port picked
here, in a directory made here, stopped by PID; nodes are separate baton
processes on their own ports.  The worker (cluster_worker.py) says which
node, stage and process answered, so spreading can be checked."""
import http.client
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import BATON, PYTHON, ROOT, SDK_PY, SLOW, Baton, free_port, wait_for

WORKER = os.path.join(ROOT, "tests", "e2e", "cluster_worker.py")
REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"

pytestmark = pytest.mark.skipif(not os.path.exists(REDIS_SERVER),
                                reason="redis-server is not installed (make test-deps)")


class Redis:
    """One redis-server, no persistence, on 127.0.0.1."""

    def __init__(self, tmp_path, bind="127.0.0.1", args=(), password=None):
        self.port = free_port()
        self.bind = bind
        self.args = list(args)  # more of redis-server's options
        self.password = password  # what redis-cli authenticates with
        self.dir = tmp_path / "redis"
        self.dir.mkdir(exist_ok=True)
        self.proc = None

    def start(self):
        self.log = open(str(self.dir / "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind"] + self.bind.split() +
            # Reached from the test's own namespaces only (see hosts): no password.
            ["--protected-mode", "no" if " " in self.bind else "yes", "--dir", str(self.dir),
             "--save", "", "--appendonly", "no", "--daemonize", "no"] + self.args,
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: self.cli("PING") == "PONG", 10 * SLOW, what="redis-server to answer")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc:
            self.log.close()

    def cli(self, *args):
        env = dict(os.environ, REDISCLI_AUTH=self.password) if self.password else None
        r = subprocess.run([REDIS_CLI, "-p", str(self.port), "--raw"] + list(args),
                           capture_output=True, timeout=10, env=env)
        return r.stdout.decode().strip()

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path).start()
    yield r
    r.stop()


def node_config(redis, node, a_replicas=2, b_replicas=1, retries=1, claim_after_ms=1000,
                extra_a="", env=None, pipeline=("a", "b"), timeout_ms=20000, queue_extra=""):
    env = dict({"PYTHONPATH": SDK_PY, "NODE": node}, **(env or {}))
    stage = ("  %s:\n    command: [%s, %s]\n    env: %s\n    replicas: %s\n"
             "    retries: %d\n    timeout_ms: %d\n")
    text = ("queue: {backend: redis, url: \"%s\", namespace: t, node: %s, claim_after_ms: %d%s}\n"
            "interval_ms: 200\nstages:\n" % (redis.url, node, claim_after_ms, queue_extra))
    reps = lambda n: n if isinstance(n, str) else "{initial: %d}" % n
    text += stage % ("a", PYTHON, WORKER, json.dumps(env), reps(a_replicas), retries,
                     timeout_ms) + extra_a
    text += stage % ("b", PYTHON, WORKER, json.dumps(env), reps(b_replicas), retries, timeout_ms)
    text += "pipelines:\n  p: [%s]\n" % ", ".join(pipeline)
    return text


def start_nodes(tmp_path, redis, n, **kw):
    nodes = []
    for i in range(n):
        b = Baton(tmp_path, node_config(redis, "n%d" % (i + 1), **kw), name="n%d" % (i + 1))
        nodes.append(b)
    for b in nodes:
        b.start(wait_ready=False)
    for b in nodes:
        b.wait_ready()
    return nodes


@pytest.fixture
def cluster(tmp_path, redis):
    made = []

    def make(n, **kw):
        nodes = start_nodes(tmp_path, redis, n, **kw)
        made.extend(nodes)
        return nodes

    yield make
    for b in made:
        b.cleanup()
    for b in made:
        assert not b.orphans, "process groups outlived baton %s: %s" % (b.log_path, b.orphans)
        log = b.log()
        for marker in ("runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer"):
            assert marker not in log, "sanitizer report in %s:\n%s" % (b.log_path, b.log_tail(60))


def post(port, body, timeout=60):
    """(status, body) of one request, or (None, error) when the connection failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout * SLOW)
    try:
        conn.request("POST", "/v1/pipelines/p", body=body)
        r = conn.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException) as e:
        return None, repr(e).encode()
    finally:
        conn.close()


def load(ports, n, concurrency, payload=lambda i: b"m%d" % i, stop=None):
    """Sends n requests spread over ports, concurrency at a time; returns
    {i: (port, status, body)}, one entry per request."""
    results, lock, nxt = {}, threading.Lock(), [0]

    def run():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= n or (stop and stop.is_set()):
                return
            port = ports[i % len(ports)]
            status, body = post(port, payload(i))
            with lock:
                assert i not in results
                results[i] = (port, status, body)

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for t in threads:
        t.start()
    return threads, results


def join(threads, timeout=240):
    deadline = time.monotonic() + timeout * SLOW
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
        assert not t.is_alive(), "a client is still waiting for an answer: something hangs"


def pending(redis, stage):
    out = redis.cli("XPENDING", "t:q:" + stage, "baton")
    return int(out.splitlines()[0]) if out else 0


def test_three_nodes_share_two_stages_every_request_answered_once(cluster, redis):
    # 10 ms a request keeps every replica busy under this load: a node with
    # one request at a time would give it to its warmest replica only.
    nodes = cluster(3, env={"CLUSTER_DELAY_MS": "10"})
    threads, results = load([b.port for b in nodes], 1000, 32)
    join(threads)
    assert len(results) == 1000
    seen = {"a": set(), "b": set()}
    for i, (port, status, body) in results.items():
        assert status == 200, (i, status, body)
        words = body.split(b" ")
        # One answer, through a then b, for exactly this request.
        assert words[0] == b"m%d" % i, body
        assert len(words) == 3, body
        for w, stage in zip(words[1:], ("a", "b")):
            node, st, pid = w.decode().split(":")
            assert st == stage
            seen[stage].add((node, pid))
    replicas = {"a": set(), "b": set()}
    for b in nodes:
        for stage in ("a", "b"):
            for r in b.status()["stages"][stage]["replicas"]:
                replicas[stage].add((os.path.basename(b.config_path)[:-5], str(r["pid"])))
    assert seen["a"] == replicas["a"] and len(seen["a"]) == 6, seen
    assert seen["b"] == replicas["b"] and len(seen["b"]) == 3, seen
    wait_for(lambda: pending(redis, "a") == 0 and pending(redis, "b") == 0, 10 * SLOW,
             what="nothing pending")
    doc = nodes[0].status()["cluster"]
    assert doc["connected"] and doc["requests"]["duplicates_dropped"] == 0
    assert doc["requests"]["answered"] == doc["requests"]["submitted"]
    # Every node sees every node, with its stages.
    wait_for(lambda: len(nodes[2].status()["cluster"]["nodes"]) == 3, 10 * SLOW, what="3 nodes")
    names = {n["name"] for n in nodes[2].status()["cluster"]["nodes"]}
    assert names == {"n1", "n2", "n3"}
    out = subprocess.run([BATON, "status", "--url", "http://127.0.0.1:%d" % nodes[0].port],
                         capture_output=True, timeout=30, check=True).stdout.decode()
    assert "CLUSTER t via %s" % redis.url in out, out
    for b in nodes:
        assert ":%d " % b.port in out, out   # every node, with its HTTP address
    metrics = nodes[0].get("/metrics").body.decode()
    assert "\nbaton_cluster_connected 1\n" in metrics and "\nbaton_cluster_nodes 3\n" in metrics
    assert 'baton_cluster_entries_taken_total{stage="a"}' in metrics
    for b in nodes:
        assert b.stop() == 0


def test_killed_node_entries_are_claimed_and_finished_by_the_others(cluster, redis):
    nodes = cluster(3, a_replicas=2, b_replicas=2, env={"CLUSTER_DELAY_MS": "100"})
    victim = nodes[2]
    threads, results = load([b.port for b in nodes], 300, 24)
    # Kill it while it holds entries of the shared queues.
    wait_for(lambda: sum(q["held"] for q in victim.status()["cluster"]["queues"].values()) >= 2,
             60 * SLOW, interval=0.01, what="the victim to hold entries")
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    killed_at = time.monotonic()
    join(threads)
    survivors = {b.port for b in nodes[:2]}
    failed_on_victim = 0
    for i, (port, status, body) in results.items():
        if port in survivors:
            assert status == 200, (i, status, body)
            assert body.startswith(b"m%d " % i) and len(body.split(b" ")) == 3, body
        else:
            failed_on_victim += status != 200
    assert failed_on_victim >= 1  # its clients were on it
    claimed = sum(q["claimed"] for b in nodes[:2]
                  for q in b.status()["cluster"]["queues"].values())
    assert claimed >= 1, "no node claimed the killed node's entries"
    wait_for(lambda: pending(redis, "a") == 0 and pending(redis, "b") == 0, 20 * SLOW,
             what="XPENDING empty after the kill")
    print("recovered %.1fs after the kill" % (time.monotonic() - killed_at))


def test_redis_restart_mid_load_answers_every_request_and_reconnects(cluster, redis):
    nodes = cluster(2, env={"CLUSTER_DELAY_MS": "20"})
    stop = threading.Event()
    threads, results = load([b.port for b in nodes], 100000, 8, stop=stop)
    wait_for(lambda: len(results) >= 50, 60 * SLOW, what="load to flow")
    redis.stop()
    lost_at = len(results)
    wait_for(lambda: len(results) >= lost_at + 20, 30 * SLOW, what="answers while redis is down")
    redis.start()
    # Back: requests succeed again on every node.
    wait_for(lambda: all(post(b.port, b"after")[0] == 200 for b in nodes), 30 * SLOW,
             interval=0.1, what="nodes to reconnect")
    stop.set()
    join(threads)
    codes = {}
    for i, (port, status, body) in results.items():
        if status == 200:
            assert body.startswith(b"m%d " % i), body
            codes["ok"] = codes.get("ok", 0) + 1
            continue
        assert status == 503, (status, body)
        doc = json.loads(body)
        assert doc["code"] == "stage_failed", doc
        assert "redis" in doc["error"], doc
        codes["down"] = codes.get("down", 0) + 1
    assert codes.get("down", 0) >= 1 and codes.get("ok", 0) >= 50, codes
    for b in nodes:
        c = b.status()["cluster"]
        assert c["connected"] and c["requests"]["reconnects"] >= 1 and c["requests"]["waiting"] == 0
        assert b.stop() == 0


def test_poison_request_ends_after_retries_plus_one_attempts_across_nodes(cluster, redis,
                                                                         tmp_path):
    crash_log = str(tmp_path / "crashes")
    # One replica per node, restarted only after 2 s: a crashed node has no
    # free slot, so the next attempt must go to another node.
    nodes = cluster(3, a_replicas=1, retries=2, timeout_ms=5000, env={"CRASH_LOG": crash_log},
                    extra_a="    restart: {backoff_ms: 2000}\n")
    status, body = post(nodes[0].port, b"poison")
    assert status == 502, body
    doc = json.loads(body)
    assert doc["code"] == "worker_crashed", doc
    with open(crash_log) as f:
        crashes = f.read().split()[0::2]
    assert len(crashes) == 3, crashes   # retries + 1, in total
    assert len(set(crashes)) >= 2, crashes
    # The cluster keeps serving.
    wait_for(lambda: post(nodes[1].port, b"fine")[0] == 200, 30 * SLOW, what="serving again")
    wait_for(lambda: pending(redis, "a") == 0, 10 * SLOW, what="nothing pending")


def test_unreachable_redis_at_start_is_a_clear_error(tmp_path):
    port = free_port()
    path = str(tmp_path / "c.yaml")

    class Dead:
        url = "redis://127.0.0.1:%d/0" % port
    with open(path, "w") as f:
        f.write(node_config(Dead, "n1"))
    r = subprocess.run([BATON, "serve", path, "--listen", "127.0.0.1:%d" % free_port()],
                       capture_output=True, timeout=30 * SLOW)
    assert r.returncode == 1, r
    err = r.stdout.decode() + r.stderr.decode()
    assert "%s:1:" % path in err and "queue.url" in err and "cannot be reached" in err, err
    # `baton check` does not need the server.
    r = subprocess.run([BATON, "check", path], capture_output=True, timeout=30 * SLOW)
    assert r.returncode == 0, r
    assert b"redis stream t:q:a" in r.stdout


def test_nodes_take_only_what_they_have_free_slots_for(cluster, redis):
    # One replica of a per node, one request at a time: a node never holds
    # more than one entry while the rest wait in Redis for whoever frees up.
    nodes = cluster(2, a_replicas=1, b_replicas=1)
    threads, results = load([nodes[0].port], 6, 6, payload=lambda i: b"slow:600 m%d" % i)
    most, waited = 0, 0

    def watch():
        nonlocal most, waited
        for b in nodes:
            q = b.status()["cluster"]["queues"]["a"]
            most = max(most, q["held"])
            if q["depth"] is not None and q["depth"] >= 3:
                waited += 1
        return len(results) == 6

    wait_for(watch, 60 * SLOW, interval=0.05, what="the slow requests")
    join(threads)
    assert all(s == 200 for _, s, _ in results.values()), results
    assert most == 1, "a node held %d entries with one free slot (prefetch)" % most
    assert waited, "entries never waited in redis"
    served = {body.split(b" ")[2].split(b":")[0] for _, _, body in results.values()}
    assert served == {b"n1", b"n2"}, served


def test_stalled_node_outcome_is_dropped_and_the_client_answered_once(cluster, redis):
    nodes = cluster(2, a_replicas=1, b_replicas=1)
    threads, results = load([nodes[0].port], 1, 1, payload=lambda i: b"slow:2500 x")

    def holder():
        for b in nodes:
            if b.status()["cluster"]["queues"]["a"]["held"]:
                return b
    stalled = wait_for(holder, 30 * SLOW, interval=0.01, what="a node to hold the entry")
    other = nodes[1] if stalled is nodes[0] else nodes[0]
    stalled.proc.send_signal(signal.SIGSTOP)
    try:
        # The other node claims it after claim_after_ms and runs it again.
        wait_for(lambda: other.status()["cluster"]["queues"]["a"]["claimed"] == 1, 30 * SLOW,
                 interval=0.05, what="the claim")
    finally:
        # Awake again while the claimer still runs it: its own worker has
        # answered meanwhile, but the entry is no longer its to finish.
        stalled.proc.send_signal(signal.SIGCONT)
    join(threads)
    assert len(results) == 1
    _, status, body = results[0]
    assert status == 200 and body.startswith(b"slow:2500 x "), body
    claimer = os.path.basename(other.config_path)[:-5].encode()
    assert body.split(b" ")[2].startswith(claimer + b":a:"), (claimer, body)
    wait_for(lambda: stalled.status()["cluster"]["queues"]["a"]["held"] == 0, 30 * SLOW,
             what="the stalled node to finish")
    assert stalled.status()["cluster"]["requests"]["outcomes_dropped"] == 1
    docs = [b.status()["cluster"]["requests"] for b in nodes]
    assert sum(d["outcomes_dropped"] for d in docs) == 1, docs
    assert sum(d["duplicates_dropped"] for d in docs) == 0, docs
    wait_for(lambda: pending(redis, "a") == 0 and pending(redis, "b") == 0, 10 * SLOW,
             what="nothing pending")


def test_autoscaling_follows_the_cluster_wide_queue(cluster, redis):
    # Every request goes to n1, yet n2 scales up too: the shared queue is deep.
    nodes = cluster(2, a_replicas="{min: 1, max: 3, initial: 1}",
                    extra_a="    autoscale: {policy: demand, target_ongoing: 1, upscale_delay_s: 0,"
                            " downscale_delay_s: 600, max_cpu: 100}\n")
    threads, results = load([nodes[0].port], 12, 12, payload=lambda i: b"slow:1000 m%d" % i)
    wait_for(lambda: nodes[1].status()["stages"]["a"]["scaling"]["active"] >= 2, 60 * SLOW,
             interval=0.05, what="n2 to scale up for the cluster's queue")
    join(threads)
    assert all(s == 200 for _, s, _ in results.values()), results
    assert any(b"n2:a:" in body for _, _, body in results.values())


def test_large_payloads_travel_by_reference_through_the_shared_directory(cluster, redis,
                                                                         tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    nodes = cluster(2, queue_extra=", inline_max_bytes: 4096, shared_dir: %s" % shared)

    def redis_input():
        info = redis.cli("INFO", "stats")
        return int(info.split("total_net_input_bytes:")[1].split()[0])
    before = redis_input()
    big = [bytes([65 + i]) * 300000 for i in range(4)]
    for i, payload in enumerate(big):
        status, body = post(nodes[i % 2].port, payload)
        assert status == 200, body[:200]
        assert body[:300000] == payload and len(body.split(b" ")) == 3, body[300000:]
    # 1.2 MB of payloads went through two stages and back: Redis saw paths only.
    assert redis_input() - before < 300000, redis_input() - before
    wait_for(lambda: not os.listdir(str(shared)), 10 * SLOW, what="the shared files to be removed")
    # Small ones stay inline.
    assert post(nodes[0].port, b"small")[0] == 200


def test_batch_run_spreads_over_every_nodes_replicas_and_resumes(cluster, redis, tmp_path):
    nodes = cluster(2, env={"CLUSTER_DELAY_MS": "50"})
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(40):
        (src / ("f%02d.txt" % i)).write_bytes(b"doc%d" % i)
    path = str(tmp_path / "run.yaml")
    with open(path, "w") as f:
        f.write(node_config(redis, "runner", env={"CLUSTER_DELAY_MS": "50"}))
    cmd = [BATON, "run", path, "--pipeline", "p", "--input", str(src), "--output", str(out)]
    r = subprocess.run(cmd, capture_output=True, timeout=120 * SLOW)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    ran_on = set()
    for i in range(40):
        body = (out / ("f%02d.txt.out" % i)).read_bytes()
        words = body.split(b" ")
        assert words[0] == b"doc%d" % i and len(words) == 3, body
        ran_on.update(w.split(b":")[0] for w in words[1:])
    assert {b"n1", b"n2"} <= ran_on, ran_on   # the serving nodes' replicas took part
    taken = [sum(q["taken"] for q in b.status()["cluster"]["queues"].values()) for b in nodes]
    # A second run resumes: nothing is done again, anywhere.
    r = subprocess.run(cmd, capture_output=True, timeout=120 * SLOW)
    assert r.returncode == 0 and b"skipped 40" in r.stdout + r.stderr, r
    assert taken == [sum(q["taken"] for q in b.status()["cluster"]["queues"].values())
                     for b in nodes]


def ip(*args):
    subprocess.run(["ip"] + list(args), check=True, capture_output=True, timeout=30)


@pytest.fixture
def hosts(tmp_path):
    """Three network namespaces on a bridge, standing for three hosts
    (10.N.M.11-13), with the bridge (10.N.M.1) for Redis and the client."""
    if os.geteuid() != 0 or not os.path.exists("/usr/sbin/ip"):
        pytest.skip("network namespaces need root and iproute2")
    tag = "%x" % (os.getpid() & 0xffff)
    net = "10.%d.%d" % (100 + os.getpid() % 100, os.getpid() // 100 % 250)
    br, made = "btbr" + tag, []
    try:
        ip("link", "add", br, "type", "bridge")
        ip("addr", "add", net + ".1/24", "dev", br)
        ip("link", "set", br, "up")
        for i in range(3):
            ns, veth = "bt%s-%d" % (tag, i), "btv%s%d" % (tag, i)
            ip("netns", "add", ns)
            made.append(ns)
            ip("link", "add", veth, "type", "veth", "peer", "name", veth + "p")
            ip("link", "set", veth + "p", "netns", ns)
            ip("link", "set", veth, "master", br, "up")
            ip("-n", ns, "addr", "add", "%s.%d/24" % (net, 11 + i), "dev", veth + "p")
            ip("-n", ns, "link", "set", veth + "p", "up")
            ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as e:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", br], capture_output=True)
        pytest.skip("cannot make network namespaces here: %s" % e.stderr.decode().strip())
    yield net, made
    for ns in made:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "link", "del", br], capture_output=True)


def test_three_hosts_in_network_namespaces_share_two_stages(hosts, tmp_path):
    net, namespaces = hosts
    redis = Redis(tmp_path, bind="127.0.0.1 %s.1" % net).start()
    procs = []
    try:
        class At:
            url = "redis://%s.1:%d/0" % (net, redis.port)
        for i, ns in enumerate(namespaces):
            path = str(tmp_path / ("h%d.yaml" % i))
            with open(path, "w") as f:
                f.write(node_config(At, "h%d" % (i + 1), a_replicas=1, b_replicas=1))
            log = open(str(tmp_path / ("h%d.log" % i)), "wb")
            # The same port on every host: each namespace has its own.
            procs.append((subprocess.Popen(
                ["ip", "netns", "exec", ns, BATON, "serve", path, "--listen",
                 "%s.%d:8080" % (net, 11 + i)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL), log))
        addrs = ["%s.%d" % (net, 11 + i) for i in range(3)]

        def ready(addr):
            for p, log in procs:
                assert p.poll() is None, "a node exited: see %s" % log.name
            try:
                c = http.client.HTTPConnection(addr, 8080, timeout=5)
                c.request("GET", "/v2/health/ready")
                return c.getresponse().status == 200
            except OSError:
                return False
        for p, _ in procs:
            assert p.poll() is None
        wait_for(lambda: all(ready(a) for a in addrs), 60 * SLOW, what="three hosts ready")
        results, lock = {}, threading.Lock()

        def client(k):
            for i in range(k, 150, 12):
                c = http.client.HTTPConnection(addrs[i % 3], 8080, timeout=60 * SLOW)
                c.request("POST", "/v1/pipelines/p", body=b"m%d" % i)
                r = c.getresponse()
                with lock:
                    results[i] = (r.status, r.read())
        threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
        for t in threads:
            t.start()
        join(threads)
        assert len(results) == 150
        ran = set()
        for i, (status, body) in results.items():
            assert status == 200 and body.split(b" ")[0] == b"m%d" % i, body
            ran.update(w.split(b":")[0] for w in body.split(b" ")[1:])
        assert ran == {b"h1", b"h2", b"h3"}, ran
        assert pending(redis, "a") == 0 and pending(redis, "b") == 0
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30 * SLOW)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
            log.close()
        redis.stop()
    for p, _ in procs:
        assert p.returncode == 0, p.returncode


def test_stopped_redis_is_taken_for_lost_and_requests_answered(cluster, redis):
    # SIGSTOP keeps the connections open and silent: only a timeout notices.
    nodes = cluster(1, a_replicas=1, b_replicas=1)
    assert post(nodes[0].port, b"before")[0] == 200
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        status, body = post(nodes[0].port, b"during")
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    assert status == 503, body
    doc = json.loads(body)
    assert doc["code"] == "stage_failed" and "no answer to PING" in doc["error"], doc
    wait_for(lambda: post(nodes[0].port, b"after")[0] == 200, 30 * SLOW, interval=0.1,
             what="the node to reconnect")


def test_sigterm_node_finishes_what_it_holds_and_takes_no_more(cluster, redis):
    nodes = cluster(2, a_replicas=1, b_replicas=1)
    threads, results = load([nodes[0].port], 6, 6, payload=lambda i: b"slow:400 m%d" % i)
    leaving = nodes[1]
    wait_for(lambda: leaving.status()["cluster"]["queues"]["a"]["held"] == 1, 30 * SLOW,
             interval=0.01, what="n2 to hold an entry")
    taken = leaving.status()["cluster"]["queues"]["a"]["taken"]
    leaving.send_signal(signal.SIGTERM)
    assert leaving.proc.wait(30 * SLOW) == 0
    join(threads)
    assert all(s == 200 for _, s, _ in results.values()), results
    by_n2 = [b for _, _, b in results.values() if b.split(b" ")[2].startswith(b"n2:a:")]
    # What it held was finished by it; nothing after the signal went to it.
    assert len(by_n2) == taken, (taken, by_n2)
    # Nor was anything left for a claim (a read still blocked when it stopped).
    assert nodes[0].status()["cluster"]["queues"]["b"]["claimed"] == 0
    wait_for(lambda: pending(redis, "a") == 0 and pending(redis, "b") == 0, 10 * SLOW,
             what="nothing pending")
