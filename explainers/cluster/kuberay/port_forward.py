"""``kubectl port-forward`` to a Kubernetes service, as a process that cannot outlive us.

:class:`PortForward` starts kubectl on a :func:`free_port`, waits until it forwards, and
stops it on ``close()``, at interpreter exit, or when this process dies (Linux
``PR_SET_PDEATHSIG`` from the main thread, a watchdog process otherwise).
"""
from __future__ import annotations

import atexit
import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Callable, Optional

from ..ray_client import child_env
from .api import K8sError

__all__ = ["PortForward", "free_port"]

_LIVE_FORWARDS: "weakref.WeakSet[PortForward]" = weakref.WeakSet()


@atexit.register
def _close_all_forwards() -> None:  # pragma: no cover - runs at interpreter exit
    for pf in list(_LIVE_FORWARDS):
        pf.close()


#: a process that kills ``argv[1]`` (kubectl) when its stdin reaches EOF without "done":
#: the parent died (its end of the pipe closed with it) before closing the port-forward
_WATCHDOG = r"""
import os, signal, sys, time
pid = int(sys.argv[1])
try:
    data = sys.stdin.buffer.read()
except BaseException:
    data = b""
if data.startswith(b"done"):
    sys.exit(0)
sig = getattr(signal, "SIGTERM", None)
for attempt in range(2):
    try:
        os.kill(pid, sig if attempt == 0 else getattr(signal, "SIGKILL", sig))
    except OSError:
        sys.exit(0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit(0)
        time.sleep(0.1)
"""


def _die_with_parent_preexec() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``), or None where that is not available.

    The death signal follows the *thread* that forks, so it is used only from the main
    thread; elsewhere :class:`PortForward` runs a watchdog process instead.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no allocation, no locks
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PortForward:
    """``kubectl port-forward svc/NAME LOCAL:REMOTE`` as a context manager.

    ``start()`` launches kubectl on a free local port, reads its stdout until the
    "Forwarding from 127.0.0.1:LOCAL -> REMOTE" line (within ``timeout``), then waits until
    the local port accepts a TCP connection. ``close()`` terminates kubectl (SIGTERM, then
    SIGKILL after ``grace`` s) and reaps it; it also runs at interpreter exit. kubectl dies
    with this process even when it is SIGKILLed (Linux: ``PR_SET_PDEATHSIG``; elsewhere, or
    when started from another thread, a watchdog process), and it is started without the
    Ray auth variables in its environment.
    """

    def __init__(self, service: str, remote_port: int, namespace: str, *,
                 kubeconfig: Optional[str] = None, context: Optional[str] = None,
                 local_port: Optional[int] = None, kubectl: str = "kubectl",
                 timeout: float = 30.0, grace: float = 5.0):
        self.service = service
        self.remote_port = int(remote_port)
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.context = context
        self.local_port = local_port
        self.kubectl = kubectl
        self.timeout = timeout
        self.grace = grace
        self.proc: Optional[subprocess.Popen] = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        self._lines: "collections.deque[str]" = collections.deque(maxlen=50)
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watchdog: Optional[subprocess.Popen] = None
        self._watchdog_pipe: Optional[int] = None

    # -- state
    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def alive(self) -> bool:
        """True while kubectl runs."""
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self) -> str:
        return "\n".join(self._stderr).strip()

    def check(self) -> None:
        """Raise K8sError when kubectl has exited (with its exit code and stderr)."""
        if self.proc is None:
            raise K8sError("the kubectl port-forward was not started")
        code = self.proc.poll()
        if code is not None:
            self._join_readers(1.0)
            raise K8sError(
                f"kubectl port-forward to svc/{self.service} in namespace {self.namespace!r} "
                f"(pid {self.proc.pid}) exited with code {code}: "
                f"{self.stderr_text() or '(no stderr)'}")

    # -- lifecycle
    def command(self) -> list[str]:
        cmd = [self.kubectl, "port-forward", f"svc/{self.service}",
               f"{self.local_port}:{self.remote_port}", "-n", self.namespace,
               "--address", "127.0.0.1"]
        if self.kubeconfig:
            cmd += ["--kubeconfig", self.kubeconfig]
        if self.context:
            cmd += ["--context", self.context]
        return cmd

    def start(self) -> "PortForward":
        exe = shutil.which(self.kubectl)
        if exe is None:
            raise K8sError(f"{self.kubectl!r} not found on PATH: install kubectl "
                           "(https://kubernetes.io/docs/tasks/tools/) to reach the Ray head")
        if self.local_port is None:
            self.local_port = free_port()
        cmd = self.command()
        cmd[0] = exe
        # kubectl gets no Ray auth token and dies with this process (even a SIGKILLed one)
        preexec = _die_with_parent_preexec()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1,
                                     env=child_env(), preexec_fn=preexec)
        _LIVE_FORWARDS.add(self)
        if preexec is None:
            self._start_watchdog()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True, name="pf-stdout"),
            threading.Thread(target=self._read_stderr, daemon=True, name="pf-stderr"),
        ]
        for t in self._threads:
            t.start()
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def restarted(self) -> "PortForward":
        """A new, started forward to the same service and port, on a new local port."""
        return PortForward(self.service, self.remote_port, self.namespace,
                           kubeconfig=self.kubeconfig, context=self.context,
                           kubectl=self.kubectl, timeout=self.timeout, grace=self.grace).start()

    def _start_watchdog(self) -> None:
        """A process that kills kubectl once this one is gone (EOF on a pipe only we hold)."""
        assert self.proc is not None
        read_end, write_end = os.pipe()  # not inheritable: no other child keeps it open
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(self.proc.pid)], stdin=read_end,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
                start_new_session=True)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._watchdog_pipe = write_end

    def _stop_watchdog(self) -> None:
        """Tell the watchdog kubectl was closed here (so it kills nothing) and reap it."""
        fd, self._watchdog_pipe = self._watchdog_pipe, None
        if fd is not None:
            try:
                os.write(fd, b"done")
            except OSError:  # pragma: no cover - the watchdog already exited
                pass
            os.close(fd)
        dog, self._watchdog = self._watchdog, None
        if dog is not None:
            try:
                dog.wait(self.grace)
            except subprocess.TimeoutExpired:  # pragma: no cover
                dog.kill()
                dog.wait(self.grace)

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        want = re.compile(rf"^Forwarding from 127\.0\.0\.1:{self.local_port} -> \d+")
        for line in self.proc.stdout:  # keep draining: kubectl logs every connection
            line = line.rstrip()
            self._lines.append(line)
            if want.match(line):
                self._ready.set()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip())

    def _join_readers(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._ready.is_set():
            self.check()
            if time.monotonic() > deadline:
                raise K8sError(
                    f"kubectl port-forward to svc/{self.service} printed no 'Forwarding from "
                    f"127.0.0.1:{self.local_port}' line within {self.timeout:.0f} s; stdout: "
                    f"{list(self._lines)[-3:]}; stderr: {self.stderr_text() or '(none)'}")
            self._ready.wait(0.05)
        while True:
            self.check()
            try:
                with socket.create_connection((self.host, self.local_port), timeout=1.0):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise K8sError(f"local port {self.local_port} of the kubectl port-forward "
                                   f"does not accept connections: {exc}") from None
                time.sleep(0.05)

    def close(self) -> None:
        """Terminate kubectl (SIGTERM, SIGKILL after ``grace`` s) and reap it. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(self.grace)
            except ProcessLookupError:  # pragma: no cover - raced with its exit
                pass
        else:
            proc.wait()
        self._stop_watchdog()
        self._join_readers(2.0)
        for stream in (proc.stdout, proc.stderr):
            try:
                if stream:
                    stream.close()
            except Exception:  # pragma: no cover
                pass
        _LIVE_FORWARDS.discard(self)

    def __enter__(self) -> "PortForward":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - safety net
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(1)
        except Exception:
            pass
