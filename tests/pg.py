"""A real PostgreSQL server for the tests: `initdb` and `pg_ctl` in a temporary folder, on a
free port (tests.support.free_port), started once per test session, with a fresh database per
test (`postgres.new_database_url()`).

The binaries are found on PATH or under Debian's /usr/lib/postgresql/<version>/bin (.ci/run
installs the `postgresql` package). initdb refuses to run as root: as root the server runs as
the `postgres` user (or `nobody`) through runuser. Without the binaries, or when the server
does not start, the tests that need it skip and say why.

Import the fixture into a test module: `from tests.pg import postgres  # noqa: F401`.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support import free_port


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _run_as() -> list[str]:
    """The command prefix that runs a program as an unprivileged user when we are root."""
    if os.getuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"]
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL")


class PostgresServer:
    def __init__(self):
        self.initdb, self.pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise FileNotFoundError("PostgreSQL's initdb/pg_ctl are not installed (Debian package `postgresql`; "
                                    ".ci/run installs it)")
        self.folder = Path(tempfile.mkdtemp(prefix="wintrain-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.prefix = _run_as()
        if self.prefix:
            user = self.prefix[2]
            info = pwd.getpwnam(user)
            os.chown(self.folder, info.pw_uid, info.pw_gid)
        self._names = itertools.count(1)

    def _run(self, *args: str, timeout: float = 120) -> None:
        proc = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")

    def start(self) -> "PostgresServer":
        self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "wintrain", "-E", "UTF8",
                  "--no-instructions")
        self.resume()
        return self

    def pause(self) -> None:
        """Stop the server (its data stays): the database goes away for whoever uses it."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)

    def resume(self) -> None:
        """Start the paused server again, on the same port."""
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
                   " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options,
                  "-w", "-t", "60", "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://wintrain@127.0.0.1:{self.port}/{database}"

    def new_database_url(self) -> str:
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


_STARTED: list[PostgresServer] = []
_FAILED: list[str] = []


@pytest.fixture(scope="session")
def postgres():
    """The session's PostgreSQL server (skips the test, with the reason, when there is none)."""
    if _FAILED:
        pytest.skip(_FAILED[0])
    try:
        server = PostgresServer().start()
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as exc:
        _FAILED.append(f"no PostgreSQL server for the job-store tests: {exc}")
        pytest.skip(_FAILED[0])
    _STARTED.append(server)
    yield server
    server.stop()
