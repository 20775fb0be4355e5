"""A throwaway PostgreSQL server for tests: a temporary cluster on a free port of 127.0.0.1.

PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres`` system user
(created by Debian's ``postgresql`` package) and its commands run through ``runuser``. The server
trusts local TCP connections of user ``sensfind`` and is stopped (``immediate``) and deleted on exit.
Missing binaries raise ``PostgresUnavailable`` with the install line, so a test can fail loudly.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

INSTALL_HINT = "apt-get install -y postgresql (Debian) and pip install 'psycopg[binary]'"
USER = "sensfind"
DATABASE = "tune"


class PostgresUnavailable(RuntimeError):
    pass


def _bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if candidates:
        return Path(candidates[-1]).parent
    raise PostgresUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not found; install them: {INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the URL ``postgresql://sensfind@127.0.0.1:PORT/tune`` of a fresh server."""
    try:
        import psycopg  # noqa: F401 - SQLAlchemy's default PostgreSQL driver
    except ImportError as exc:
        raise PostgresUnavailable(f"the psycopg driver is missing ({exc}); install it: {INSTALL_HINT}") from None
    bindir = _bindir()
    prefix: list[str] = []
    root = tempfile.mkdtemp(prefix="sensfind-pg-")
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no 'postgres' user to own the cluster; "
                                      f"install Debian's package ({INSTALL_HINT}) or run the tests as a normal user")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, logfile = Path(root) / "data", Path(root) / "server.log"
    port = _free_port()

    def run(*cmd: str) -> None:
        res = subprocess.run(prefix + list(cmd), capture_output=True, text=True, cwd=root, timeout=120)
        if res.returncode != 0:
            log = logfile.read_text() if logfile.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}\n{log}")

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "--no-sync", "-E", "UTF8")
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-o", opts, "-w", "-t", "60", "start")
        started = True
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE)
        yield f"postgresql://{USER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if started:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
