"""A real Jupyter server with nbmonitor, and hosts that share neither files, processes nor a network
with it: scripts in their own network, UTS, PID and mount namespaces, which reach the server only
through a veth pair and cannot see its repo."""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .helpers import Proc, terminate, wait_until
from .servers import free_port


class JupyterServer:
    """``jupyter server`` with nbmonitor serving ``repo``, on ``ip``; stop() and start() again keep
    its port and token, as a restarted server would."""

    def __init__(self, work: Path, repo: Path, ip: str = "127.0.0.1", tls: tuple[Path, Path] | None = None):
        self.work, self.repo, self.ip, self.tls = work, repo, ip, tls
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = work / "server.log"
        self.start()

    def start(self) -> None:
        scheme_args = (
            [f"--ServerApp.certfile={self.tls[0]}", f"--ServerApp.keyfile={self.tls[1]}"] if self.tls else []
        )
        env = dict(
            os.environ,
            JUPYTER_CONFIG_DIR=str(self.work / "config"),
            JUPYTER_RUNTIME_DIR=str(self.work / "rt"),
        )
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
                    f"--ServerApp.ip={self.ip}", f"--ServerApp.port={self.port}",
                    "--ServerApp.port_retries=0",
                    f"--IdentityProvider.token={self.token}", f"--Nbmonitor.repo={self.repo}",
                    "--ServerApp.jpserver_extensions={'nbmonitor': True}", *scheme_args,
                ],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.work,
            )  # fmt: skip
        wait_until(self._up, 60, "the Jupyter server to answer")

    def _up(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the Jupyter server ended:\n{self.log.read_text()[-3000:]}")
        try:
            context = None
            if self.tls:
                context = ssl.create_default_context(cafile=str(self.tls[0]))
            status = f"{self.url('127.0.0.1')}api/status?token={self.token}"
            with urllib.request.urlopen(status, timeout=2, context=context) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def url(self, host: str | None = None) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host or self.ip}:{self.port}/"

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, 15)


def can_make_hosts() -> bool:
    """Root, unshare and ip: far hosts can be made here."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = ["unshare", "--net", "--uts", "--pid", "--fork", "--mount-proc", "true"]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


_links = itertools.count(1)


class FarHost:
    """Another host: its own host name, pids and network (a veth pair to this one, ``10.231.N.2``
    there and ``10.231.N.1`` here), with ``hidden`` (the server's repo) covered by an empty tmpfs."""

    def __init__(self, name: str, work: Path, hidden: Path) -> None:
        self.name, self.hidden = name, hidden
        number = next(_links)
        self.subnet = f"10.231.{(os.getpid() + number) % 250 + 1}"
        self.outside, self.inside = f"nbm{os.getpid() % 100000}x{number}", "eth0"
        self.ready = work / f".ready-{name}"

    @property
    def server_address(self) -> str:
        return f"{self.subnet}.1"

    def run(self, args: Sequence[str], env: dict[str, str], repo: Path) -> Proc:
        """Start ``args`` there; it begins once its network is up."""
        inner = " && ".join(
            [
                f"hostname {self.name}",
                f"mount -t tmpfs tmpfs {self.hidden}",
                f"while [ ! -e {self.ready} ]; do sleep 0.02; done",
                "ip link set lo up",
                f"ip addr add {self.subnet}.2/24 dev {self.inside}",
                f"ip link set {self.inside} up",
                "exec " + " ".join(args),
            ]
        )
        command = ["unshare", "--net", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"]
        proc = Proc([*command, "sh", "-c", inner], repo, env=env)
        child = wait_until(lambda: _child_of(proc.popen.pid), 10, "the far host's first process")
        for step in (
            [
                "ip",
                "link",
                "add",
                self.outside,
                "type",
                "veth",
                "peer",
                "name",
                self.inside,
                "netns",
                str(child),
            ],
            ["ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.outside],
            ["ip", "link", "set", self.outside, "up"],
        ):
            subprocess.run(step, check=True, capture_output=True, timeout=10)
        self.ready.touch()
        return proc

    def close(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):  # gone with its namespace
            subprocess.run(["ip", "link", "del", self.outside], capture_output=True, timeout=10)


def _child_of(pid: int) -> int | None:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(found[0]) if found else None
