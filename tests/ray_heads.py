"""A real local Ray head for the tests that need one outside their own process: ``RayHead``.

``ray start --head --block`` with token authentication, in a temp dir of its own (short: unix
socket paths), on free ports, 1 CPU; optionally with the dashboard (the Ray Jobs API). It is
started and stopped by process id: ``stop()`` sends SIGTERM to ``ray start`` (``--block``
stops what it started), then kills whatever of it is left; nothing else on the machine is
touched.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

import psutil
import pytest

#: seconds a head has to come up before the test fails
START_TIMEOUT = 120
#: starts tried before the test fails: a port chosen free can be taken before ray start binds it
START_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` different free ports (held open together while they are chosen)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class RayHead:
    """A local Ray head with token auth: ``port`` (Ray Client), ``address`` (``ray://``),
    ``dashboard_port`` (with ``dashboard=True``), ``temp_dir``, ``proc`` (``ray start``)."""

    def __init__(self, token: str, *, dashboard: bool = False, prefix: str = "krh",
                 env: Mapping[str, str] | None = None, object_store_mb: int = 100) -> None:
        self.token = token
        full_env = dict(os.environ if env is None else env, RAY_AUTH_MODE="token",
                        RAY_AUTH_TOKEN=token, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
        for var in ("RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
            full_env.pop(var, None)
        for attempt in range(1, START_ATTEMPTS + 1):
            self._start(full_env, dashboard, prefix, object_store_mb)
            exited = self._wait_up()
            if exited is None:
                return
            self.stop()
            if attempt == START_ATTEMPTS:
                pytest.fail(f"ray start exited with {self.proc.returncode} ({attempt} attempts): {exited}")

    def _start(self, env: Mapping[str, str], dashboard: bool, prefix: str, object_store_mb: int) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        names = ["port", "ray-client-server-port", "node-manager-port", "object-manager-port",
                 "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                 "runtime-env-agent-port", "metrics-export-port"]
        if dashboard:
            names.append("dashboard-port")
        ports = dict(zip(names, free_ports(len(names))))
        self.port = ports["ray-client-server-port"]
        self.address = f"ray://127.0.0.1:{self.port}"
        self.dashboard_port = ports.get("dashboard-port")
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
               "--num-cpus=1", f"--include-dashboard={'true' if dashboard else 'false'}",
               "--disable-usage-stats", f"--object-store-memory={object_store_mb * 1024**2}",
               f"--temp-dir={self.temp_dir}"]
        if dashboard:
            cmd.append("--dashboard-host=127.0.0.1")
        cmd += [f"--{k}={v}" for k, v in ports.items()]
        self.log = open(os.path.join(self.temp_dir, "ray_start.log"), "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def _wait_up(self) -> str | None:
        """``None`` once the head answers; the end of its log if ``ray start`` exited first."""
        from explainers.cluster.kuberay import probe_ray_client

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                return Path(self.log.name).read_text()[-2000:]
            try:
                probe_ray_client("127.0.0.1", self.port, self.token, timeout=2)
                if self.dashboard_port is not None:
                    self.job_client().get_version()
                return None
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.5)

    def job_client(self):
        """A Ray Jobs client of the dashboard, with the token."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(f"http://127.0.0.1:{self.dashboard_port}",
                                   headers={"Authorization": f"Bearer {self.token}"})

    def processes(self) -> list[psutil.Process]:
        """Every live process of this head: ``ray start`` and what it started."""
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.proc.pid)
            found.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        except psutil.Error:
            pass
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(self.temp_dir in a for a in (p.info["cmdline"] or [])):
                    found[p.pid] = p
            except psutil.Error:
                pass
        return [p for p in found.values() if alive(p)]

    def kill(self) -> None:
        """SIGKILL every process of the head at once (a node that vanishes)."""
        for p in self.processes():
            try:
                p.kill()
            except psutil.Error:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # --block: ray start stops what it started
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        self.log.close()
        if not os.environ.get("KEEP_RAY_TMP"):
            shutil.rmtree(self.temp_dir, ignore_errors=True)
