"""A private ``redis-server`` for the tests, the demo and the lab: start, ACL users, stop.

    with RedisServer(Path("/tmp/st-redis")) as srv:
        admin = srv.client()                       # the admin user (all commands)
        creds = srv.add_nf_user("nat0-7f3a")       # an NF's own user, limited to its prefix

Each server has its own directory (config, ACL file, append-only files,
log), its own TCP port on 127.0.0.1 (a free one unless given), a Unix socket
(:attr:`RedisServer.socket_path`: NFs in a worker's network namespace reach
it there, where 127.0.0.1 is not the server's; the agent hands them that
path) in a directory of its own under /tmp that every user may traverse (an
NF reconnecting after a Redis restart runs as its own unprivileged uid; the
data directory stays private), and ACLs on:
the ``default`` user is disabled, an ``admin`` user with a fresh random
password creates one user per NF instance (:meth:`add_nf_user`) whose rights
are limited to its key prefix.  Durability: ``appendonly yes`` and
``appendfsync`` as given (``always`` by default: Redis fsyncs the AOF before
it answers a write, so an acknowledged write is on disk; see docs/state.rst
for the trade-off).  ``stop`` shuts the server down and removes the
directory if this object made it.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FSYNC_MODES = ("always", "everysec", "no")
# What an NF's own user may run: reads and writes of keys it names, nothing
# that lists keys (SCAN and KEYS ignore key permissions, so they would show
# other NFs' key names) or touches the server or other users (FLUSH*,
# CONFIG, ACL, SCRIPT, MODULE, DEBUG, ...).
NF_COMMANDS = (
    "+get",
    "+mget",
    "+set",
    "+mset",
    "+del",
    "+unlink",
    "+exists",
    "+ping",
    "+hello",
    "+client|setname",
    "+auth",
)


class RedisError(RuntimeError):
    pass


@dataclass(frozen=True)
class NFCredentials:
    """What an NF runtime needs to reach its state: where, who, and its key prefix."""

    host: str
    port: int
    user: str
    password: str
    prefix: str

    def as_config(self) -> dict:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "prefix": self.prefix,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_nf_user(admin, prefix: str, host: str, port: int, user: str | None = None):
    """Create (or reset) the ACL user of one NF through the ``admin`` client
    (redis-py, a user allowed ``ACL``), limited to ``<prefix>:*``; returns its
    :class:`NFCredentials` with ``host``/``port`` as the NF is to reach the server."""
    user = user or f"nf-{prefix}"
    password = secrets.token_hex(16)
    admin.execute_command("ACL", "SETUSER", *nf_acl_rules(user, password, prefix))
    admin.execute_command("ACL", "SAVE")
    return NFCredentials(host, port, user, password, prefix)


def nf_acl_rules(user: str, password: str, prefix: str) -> list[str]:
    """The ``ACL SETUSER`` arguments for an NF's user: keys ``<prefix>:*`` only."""
    if not prefix or any(c in prefix for c in "*?[]\\ :"):
        raise ValueError(f"prefix: must be non-empty, no glob characters, ':' or space: {prefix!r}")
    rules = [user, "reset", "on", f">{password}", f"~{prefix}:*", "resetchannels", "-@all"]
    return rules + list(NF_COMMANDS)


class RedisServer:
    def __init__(
        self,
        directory: Path | None = None,
        port: int | None = None,
        appendfsync: str = "always",
        binary: str = "redis-server",
        core: int | None = None,
    ):
        if appendfsync not in FSYNC_MODES:
            modes = ", ".join(FSYNC_MODES)
            raise ValueError(f"appendfsync: must be one of {modes}, got {appendfsync!r}")
        self._made_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="qd-redis-", dir="/tmp"))
        self.host = "127.0.0.1"
        self.port = port or _free_port()
        self.appendfsync = appendfsync
        self.binary = binary
        self.core = core
        self.admin_password = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        # made by start, removed by stop; the same path across a restart
        self.socket_dir = Path(tempfile.gettempdir()) / f"qd-redis-sock-{secrets.token_hex(6)}"

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / "redis.sock"

    # -- lifecycle -------------------------------------------------------------------------

    def write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o755, exist_ok=True)
        self.socket_dir.chmod(0o755)  # whatever the umask: NFs' uids traverse it
        acl = self.dir / "users.acl"
        pwfile = self.dir / "admin.password"
        if pwfile.exists():  # a restart keeps its users (ACL SAVE stores only hashes)
            self.admin_password = pwfile.read_text().strip()
        else:
            pwfile.touch(mode=0o600)
            pwfile.write_text(self.admin_password + "\n")
        if not acl.exists():
            acl.write_text(f"user default off\nuser admin on >{self.admin_password} ~* &* +@all\n")
        conf = self.dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    f"bind {self.host}",
                    f"port {self.port}",
                    f"unixsocket {self.socket_path}",
                    # any local process may connect (NFs run as their own uids); what it
                    # may do is its ACL user's (the default user is off)
                    "unixsocketperm 777",
                    "protected-mode yes",
                    f"dir {self.dir}",
                    "daemonize no",
                    f"logfile {self.dir / 'redis.log'}",
                    f"aclfile {acl}",
                    "appendonly yes",
                    "appenddirname appendonly",
                    f"appendfsync {self.appendfsync}",
                    'save ""',
                    "databases 1",
                    "",
                ]
            )
        )
        return conf

    def start(self, timeout: float = 10.0) -> RedisServer:
        conf = self.write_config()
        cmd = [self.binary, str(conf)]
        if self.core is not None:
            cmd = ["taskset", "-c", str(self.core), *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                rc = self.proc.returncode
                raise RedisError(f"redis-server exited with {rc}: {err}{self.log()}")
            try:
                if self.client().ping():
                    return self
            except Exception:  # noqa: BLE001 - not up yet (refused, loading)
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RedisError(f"redis-server on port {self.port} not up after {timeout} s")
            time.sleep(0.05)

    def stop(self, remove: bool | None = None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis flushes the AOF and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        if remove if remove is not None else self._made_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would: what survives is what the AOF has."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text()[-2000:]
        except OSError:
            return ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients and users -----------------------------------------------------------------

    def client(self, user: str = "admin", password: str | None = None):
        import redis

        return redis.Redis(
            host=self.host,
            port=self.port,
            username=user,
            password=self.admin_password if password is None else password,
            socket_timeout=5,
        )

    def add_nf_user(
        self, prefix: str, user: str | None = None, unix: bool = False
    ) -> NFCredentials:
        """Create (or reset) the ACL user of one NF instance, limited to ``<prefix>:*``;
        ``unix``: its credentials name the Unix socket instead of the TCP port."""
        admin = self.client()
        try:
            host = str(self.socket_path) if unix else self.host
            return create_nf_user(admin, prefix, host, self.port, user)
        finally:
            admin.close()


def main(argv=None) -> int:
    """``python -m worker.redis_server DIR``: run one for the demo or the lab until Ctrl-C."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Run a private redis-server with ACLs and AOF.")
    ap.add_argument("dir", type=Path)
    ap.add_argument("--port", type=int)
    ap.add_argument("--appendfsync", choices=FSYNC_MODES, default="always")
    ap.add_argument("--nf", action="append", default=[], metavar="PREFIX", help="create an NF user")
    opts = ap.parse_args(argv)
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally: stop Redis
    srv = RedisServer(opts.dir, opts.port, opts.appendfsync).start()
    try:
        print(f"redis-server on {srv.host}:{srv.port}, dir {srv.dir} (admin: admin.password)")
        for prefix in opts.nf:
            print(json.dumps(srv.add_nf_user(prefix).as_config()))
        srv.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop(remove=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
