"""Ray, Python, NumPy and scikit-learn versions: the cluster's, ours, and whether they fit.

Ray Client needs the same Ray version and Python ``major.minor`` on both sides; the model
and data are cloudpickled to the cluster, so NumPy ``major.minor`` and scikit-learn must
match too. :func:`rephrase_init_error` turns Ray Client's own connect errors into
:class:`K8sError`.
"""
from __future__ import annotations

import re
import sys
from typing import Any, Optional

from .api import K8sError, shorten

__all__ = ["compare_versions", "cluster_versions", "rephrase_init_error"]


def _py_tuple(version: Any) -> tuple[int, int]:
    if isinstance(version, str):
        parts = version.split(".")
        return int(parts[0]), int(parts[1])
    return int(version[0]), int(version[1])


def _installed_version(module: str) -> Optional[str]:
    """``module.__version__`` of an importable module in this process, else None."""
    try:
        import importlib
        return str(importlib.import_module(module).__version__)
    except Exception:
        return None


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(re.split(r"[.+]", version)[:2])


def compare_versions(cluster_ray: str, cluster_python: Any, *,
                     local_ray: Optional[str] = None,
                     local_python: Optional[Any] = None,
                     cluster_numpy: Optional[str] = None,
                     cluster_sklearn: Optional[str] = None,
                     local_numpy: Optional[str] = None,
                     local_sklearn: Optional[str] = None,
                     check_model_libs: bool = False) -> None:
    """Raise K8sError unless Ray versions are equal and Python ``major.minor`` are equal.

    NumPy and scikit-learn, whose objects (the model, the data) are cloudpickled to the
    cluster, are compared too: NumPy ``major.minor`` must be equal, scikit-learn exactly
    (its pickles are only supported by the version that wrote them). A library is compared
    when its ``cluster_*`` version is given, or for both when ``check_model_libs`` is true
    (then None means "not installed on the cluster"). ``local_*`` default to this
    process's versions; a library not installed here is not compared (no model of it can
    be pickled here).
    """
    if local_ray is None:
        import ray
        local_ray = ray.__version__
    local_py = _py_tuple(local_python if local_python is not None else sys.version_info[:2])
    cluster_py = _py_tuple(cluster_python)
    problems = []
    if cluster_ray != local_ray:
        problems.append(f"Ray {cluster_ray} on the cluster, {local_ray} here")
    if cluster_py != local_py:
        problems.append("Python {}.{} on the cluster, {}.{} here".format(*cluster_py, *local_py))
    lib_problems, pins = [], []
    for label, dist, module, there, here, same in (
            ("NumPy", "numpy", "numpy", cluster_numpy, local_numpy,
             lambda a, b: _major_minor(a) == _major_minor(b)),
            ("scikit-learn", "scikit-learn", "sklearn", cluster_sklearn, local_sklearn,
             lambda a, b: a == b)):
        if there is None and not check_model_libs:
            continue
        here = here if here is not None else _installed_version(module)
        if here is None:
            continue
        if there is None:
            lib_problems.append(f"{label} not installed on the cluster, {here} here")
        elif not same(str(there), str(here)):
            lib_problems.append(f"{label} {there} on the cluster, {here} here")
        else:
            continue
        pins.append(f"{dist}=={here}")
    message = []
    if problems:
        tag = "{}-py{}{}".format(local_ray, *local_py)
        message.append(
            "Ray/Python version mismatch between this client and the cluster: "
            + "; ".join(problems) + ". Ray Client needs the same Ray version and Python "
            f"major.minor: build the cluster image from rayproject/ray:{tag} (k8s/Dockerfile, "
            f"RAY_VERSION={local_ray}) or install ray=={cluster_ray} on Python "
            "{}.{} here.".format(*cluster_py))
    if lib_problems:
        message.append(
            "NumPy/scikit-learn version mismatch between this client and the cluster: "
            + "; ".join(lib_problems) + ". The model and data are cloudpickled to the "
            "cluster, which needs the same NumPy major.minor and the same scikit-learn: "
            "regenerate k8s/constraints.txt here (python k8s/constraints.py > "
            "k8s/constraints.txt; it pins " + ", ".join(pins) + ") and rebuild the "
            "cluster image from k8s/Dockerfile under a new tag, or install the cluster's "
            "versions here.")
    if message:
        raise K8sError(" ".join(message))


def rephrase_init_error(exc: BaseException, address: str) -> Optional[K8sError]:
    """Turn Ray Client's own connect errors into K8sError (None: not one we know)."""
    text = str(exc)
    if "Version mismatch" in text:
        ray_v = re.findall(r"Ray: (\S+)", text)
        py_v = re.findall(r"Python: (\S+)", text)
        detail = ""
        if len(ray_v) >= 2 and len(py_v) >= 2:
            try:
                compare_versions(ray_v[0], py_v[0], local_ray=ray_v[1], local_python=py_v[1])
            except K8sError as err:
                return K8sError(f"connecting to {address} failed: {err}")
            detail = "(patch-level difference only)"
        return K8sError(f"connecting to {address} failed: Ray/Python version mismatch "
                        f"{detail}: {shorten(exc, 600)}")
    if "authentication" in text.lower() or "UNAUTHENTICATED" in text:
        return K8sError(f"connecting to {address} failed: Ray token authentication: "
                        f"{shorten(exc, 600)}; set RAY_AUTH_TOKEN to the cluster's token")
    if isinstance(exc, ConnectionError):
        return K8sError(f"connecting to {address} failed: {exc} (is the port-forward alive "
                        "and the head pod running?)")
    return None


def cluster_versions(timeout: float = 60.0) -> dict[str, Any]:
    """Run a zero-CPU task on the connected cluster: its Ray, Python and project versions,
    and those of NumPy and scikit-learn (the model and data are pickled across).

    Returns ``{"ray": str, "python": (major, minor), "explainers": str | None,
    "numpy": str | None, "sklearn": str | None, "node_id": str}`` (None: not importable).
    """
    import ray

    @ray.remote(num_cpus=0, max_retries=0)
    def _versions() -> dict:
        import importlib
        import sys as _sys

        import ray as _ray
        try:
            project = importlib.import_module("explainers").__version__
        except Exception:  # not installed on the cluster
            project = None
        libs = {}
        for key, module in (("numpy", "numpy"), ("sklearn", "sklearn")):
            try:
                libs[key] = str(importlib.import_module(module).__version__)
            except Exception:  # not installed on the cluster
                libs[key] = None
        return {"ray": _ray.__version__, "python": tuple(_sys.version_info[:2]),
                "explainers": project, **libs,
                "node_id": _ray.get_runtime_context().get_node_id()}

    try:
        return ray.get(_versions.remote(), timeout=timeout)
    except Exception as exc:
        raise K8sError(f"the version-check task did not complete on the cluster within "
                       f"{timeout:.0f} s: {type(exc).__name__}: {shorten(exc)}") from None
