"""Ray Jobs on a KubeRay cluster, through the port-forwarded dashboard of :class:`K8sConnection`.

:class:`RayJobs` wraps Ray's :class:`ray.job_submission.JobSubmissionClient` with the cluster's
token (an ``Authorization: Bearer`` header, so nothing is put in ``os.environ``) and bounds:
:meth:`RayJobs.follow` polls the job's status and log, passes new log text on as it comes, and
ends with a :class:`JobOutcome`, or raises :class:`ForwardLost` when kubectl died and
:class:`JobTimeout` at the deadline. :meth:`RayJobs.stop` stops a job and waits (bounded) until
Ray says it is over.

The Jobs API asks nothing of the local Ray version beyond the client itself: no Ray, Python,
NumPy or scikit-learn match with the cluster, since nothing is pickled across.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from .api import K8sError
from .auth import SECRET_TOKEN_HELP

if TYPE_CHECKING:
    from .connection import K8sConnection

__all__ = ["JobOutcome", "ForwardLost", "JobTimeout", "RayJobs", "TERMINAL_STATES"]

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
#: seconds between two polls of a running job's status and log
POLL_SECONDS = 1.0
#: seconds :meth:`RayJobs.stop` waits for Ray to report a stopped job
STOP_TIMEOUT = 30.0


class ForwardLost(K8sError):
    """The port-forward to the dashboard died while a job ran."""


class JobTimeout(K8sError):
    """A job ran past its deadline (``--k8s-timeout``)."""


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended: ``status`` (one of :data:`TERMINAL_STATES`), the entrypoint's
    ``exit_code`` (``None`` if it never ran), Ray's ``message`` and the whole ``log``."""

    job_id: str
    status: str
    exit_code: Optional[int]
    message: str
    log: str


class RayJobs:
    """The Ray Jobs API of one :class:`K8sConnection` (``kind == "dashboard"``)."""

    def __init__(self, connection: "K8sConnection", *, poll_seconds: float = POLL_SECONDS):
        self.connection = connection
        self.poll_seconds = poll_seconds
        self._client: Any = None
        self._client_address: Optional[str] = None

    # -- the client
    def client(self) -> Any:
        """A :class:`JobSubmissionClient` for the forward's current address (made on first use,
        and again after :meth:`K8sConnection.reforward`). A missing or wrong token, and a
        dashboard that does not answer, are :class:`K8sError` within the connection's timeout."""
        conn = self.connection
        if self._client is not None and self._client_address == conn.address:
            return self._client
        conn.ensure_alive()
        from ray.job_submission import JobSubmissionClient

        headers = {"Authorization": f"Bearer {conn.token}"} if conn.token else None
        where = f"the Ray dashboard of {conn.namespace}/{conn.cluster} at {conn.address}"
        try:
            self._client = JobSubmissionClient(conn.address, headers=headers)
        except Exception as exc:  # noqa: BLE001 - Ray raises several kinds here
            text = str(exc)
            if "Authentication" in type(exc).__name__ or "Unauthorized" in text or "Forbidden" in text:
                what = "a wrong" if conn.token else "no"
                raise K8sError(f"{where} refused {what} Ray auth token: {text.splitlines()[0]}; "
                               f"{SECRET_TOKEN_HELP}") from None
            conn.ensure_alive()
            raise K8sError(f"{where} did not answer the Jobs API: {text.splitlines()[0] if text else exc!r}"
                           ) from None
        self._client_address = conn.address
        return self._client

    def cluster_ray_version(self) -> Optional[str]:
        """The Ray version the head reports (``/api/version``), or ``None`` if it does not say."""
        try:
            return self.client().get_version()
        except Exception:  # noqa: BLE001 - only for machine info
            return None

    # -- a job
    def submit(self, entrypoint: str, *, runtime_env: Optional[dict[str, Any]] = None,
               metadata: Optional[dict[str, str]] = None) -> str:
        """Submit ``entrypoint``; its job id."""
        try:
            return self.client().submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                            metadata=metadata)
        except K8sError:
            raise
        except Exception as exc:  # noqa: BLE001
            self._raise_lost_forward(exc)
            raise K8sError(f"submitting the job to {self.connection.address} failed: {exc}") from None

    def follow(self, job_id: str, *, on_output: Callable[[str], None],
               deadline: float) -> JobOutcome:
        """Pass the job's log on (``on_output(new_text)``) until it ends; its :class:`JobOutcome`.

        ``deadline`` is a :func:`time.monotonic` time: :class:`JobTimeout` after it. A dead
        port-forward is :class:`ForwardLost`. The job keeps running in both cases: stop it.
        """
        shown = 0
        while True:
            try:
                status = str(self.client().get_job_status(job_id).value)
                log = self.client().get_job_logs(job_id)
            except K8sError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._raise_lost_forward(exc)
                raise K8sError(f"reading job {job_id} from {self.connection.address} failed: {exc}"
                               ) from None
            if len(log) > shown:
                on_output(log[shown:])
                shown = len(log)
            if status in TERMINAL_STATES:
                info = self.client().get_job_info(job_id)
                log = self.client().get_job_logs(job_id)
                if len(log) > shown:
                    on_output(log[shown:])
                exit_code = getattr(info, "driver_exit_code", None)
                return JobOutcome(job_id, status, None if exit_code is None else int(exit_code),
                                  str(info.message or ""), log)
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {job_id} was still {status} at the deadline (--k8s-timeout)")
            time.sleep(self.poll_seconds)

    def stop(self, job_id: str, *, timeout: float = STOP_TIMEOUT) -> str:
        """Stop the job and wait until it is over (at most ``timeout`` s); its final status.

        A forward that died is replaced first. :class:`K8sError` if the job cannot be stopped,
        naming the command that stops it by hand.
        """
        conn = self.connection
        manual = (f"stop it with `ray job stop {job_id}` against the dashboard of "
                  f"{conn.namespace}/{conn.cluster}")
        try:
            if not conn.alive():
                conn.reforward()
            client = self.client()
            status = str(client.get_job_status(job_id).value)
            if status in TERMINAL_STATES:
                return status
            client.stop_job(job_id)
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                status = str(client.get_job_status(job_id).value)
                if status in TERMINAL_STATES:
                    return status
                time.sleep(0.5)
        except Exception as exc:  # noqa: BLE001
            raise K8sError(f"could not stop job {job_id}: {exc}; {manual}") from None
        raise K8sError(f"job {job_id} was still {status} {timeout:.0f} s after it was asked to "
                       f"stop; {manual}")

    def _raise_lost_forward(self, exc: BaseException) -> None:
        if not self.connection.alive():
            try:
                self.connection.ensure_alive()
            except K8sError as lost:
                raise ForwardLost(str(lost)) from None
