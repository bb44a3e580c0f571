"""A throw-away PostgreSQL + PostGIS server for the tests (Debian's postgresql and postgresql-15-postgis-3):
initdb in a temporary folder, listening on a free loopback port, trust authentication, removed afterwards.
`start()` returns None with the reason when the packages are not installed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional


def _bindir() -> Optional[Path]:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgisServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="footprint_pg_"))
        self.data = self.root / "data"
        self.port = _free_port()
        # initdb refuses to run as root: run the server as Debian's postgres user then.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "postgres")
            self.root.chmod(0o700)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120, check=True)

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )
        psql = [
            str(self.bindir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
        ]
        self._run(*psql, "-c", "CREATE DATABASE footprint")
        self._run(*psql, "-d", "footprint", "-c", "CREATE EXTENSION postgis")

    @property
    def uri(self) -> str:
        return f"dbname='footprint' host=127.0.0.1 port={self.port} user='postgres' sslmode=disable"

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> tuple[Optional[PostgisServer], str]:
    """(server, "") or (None, why not)."""
    bindir = _bindir()
    if bindir is None:
        return None, "PostgreSQL is not installed (apt-get install postgresql postgresql-15-postgis-3)"
    version = bindir.parts[-2]
    if not Path(f"/usr/share/postgresql/{version}/extension/postgis.control").is_file():
        return (
            None,
            f"PostGIS for PostgreSQL {version} is not installed (apt-get install postgresql-{version}-postgis-3)",
        )
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return None, "running as root without runuser: cannot start PostgreSQL as the postgres user"
    server = PostgisServer(bindir)
    try:
        server.start()
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        server.stop()
        return None, f"could not start a local PostgreSQL: {detail.strip()[-500:]}"
    return server, ""
