"""A throw-away PostgreSQL server: Debian's postgresql binaries, initdb in a
temporary directory, listening only on a Unix socket in that directory (no
TCP), stopped by PID.  Used by `make demo-timeseries`, bench/timeseries and
the end-to-end tests.

As root, the server runs as the `postgres` user (postgres refuses root);
the superuser inside is `baton` with trust authentication on the socket,
which only the directory's owner and root can reach.
"""
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time


def pg_bindir():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return os.path.dirname(found[-1])


def _free_port():
    # The port only names the socket file (.s.PGSQL.PORT); no TCP listener.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class TmpPostgres:
    def __init__(self, root=None):
        self.bindir = pg_bindir()
        self.dir = tempfile.mkdtemp(prefix="baton-pg-", dir=root)
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self.proc = None
        self.uid = self.gid = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            os.chown(self.dir, self.uid, self.gid)
        self._run([os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", "baton",
                   "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"])

    def _demote(self):
        if self.uid is not None:
            os.setgid(self.gid)
            os.setuid(self.uid)

    def _run(self, argv):
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       preexec_fn=self._demote)

    @property
    def env(self):
        """The PG* variables that reach this server (no password anywhere)."""
        return {"PGHOST": self.dir, "PGPORT": str(self.port), "PGUSER": "baton",
                "PGDATABASE": "postgres"}

    def start(self, timeout=60):
        log = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = subprocess.Popen(
            [os.path.join(self.bindir, "postgres"), "-D", self.data, "-k", self.dir,
             "-p", str(self.port), "-c", "listen_addresses=", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            stdout=log, stderr=log, preexec_fn=self._demote)
        log.close()
        sock = os.path.join(self.dir, ".s.PGSQL.%d" % self.port)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("postgres exited: " + self.log_tail())
            if os.path.exists(sock) and self.ready():
                return self
            time.sleep(0.05)
        raise RuntimeError("postgres did not start in %ds: %s" % (timeout, self.log_tail()))

    def ready(self):
        r = subprocess.run([os.path.join(self.bindir, "pg_isready"), "-q", "-h", self.dir,
                            "-p", str(self.port)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def stop(self, sig=signal.SIGINT, timeout=60):
        """SIGINT: fast shutdown (clients cut off); SIGQUIT: immediate; by PID."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def psql(self, sql=None, db="postgres", file=None, **variables):
        """Runs sql (or a file, with psql variables) with psql; returns stdout
        (tab-separated, no headers)."""
        env = dict(os.environ, **self.env)
        env["PGDATABASE"] = db
        argv = [os.path.join(self.bindir, "psql"), "-X", "-q", "-A", "-t", "-F", "\t",
                "-v", "ON_ERROR_STOP=1"]
        for k, v in variables.items():
            argv += ["-v", "%s=%s" % (k, v)]
        argv += ["-f", file] if file else ["-c", sql]
        r = subprocess.run(argv, env=env, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError("psql: " + r.stderr)
        return r.stdout

    def destroy(self):
        # Immediate shutdown: nothing in it is kept, so no final checkpoint.
        self.stop(signal.SIGQUIT)
        shutil.rmtree(self.dir, ignore_errors=True)
