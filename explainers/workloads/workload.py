"""Any team's own workload for the suite (``--workload MODULE:CALLABLE``): what it is and how it is checked.

The suite imports ``MODULE``, gets ``CALLABLE`` (a dotted attribute path is allowed, e.g.
``mypkg.models:Factory.build``), calls it with no arguments, and explains the returned
object's instances with its model. That object needs these attributes (a :class:`Workload`
has them, but any object will do, e.g. a ``types.SimpleNamespace``):

- ``name`` (str): recorded in every benchmark record and in the machine info;
- ``predict``: ``(rows, D)`` float64 array -> ``(rows,)`` or ``(rows, K)`` finite numbers;
  the backends pickle it to their workers (cloudpickle), so it should be picklable;
- ``background``: ``(N, D)`` rows whose average stands for "feature unknown";
- ``X``: ``(n, D)`` the instances to explain (``--n-instances`` takes the first rows);
- optional ``groups``: lists of column indices, one per player, partitioning ``range(D)``
  (default: one player per column); ``group_names``: one name per group;
  ``link``: ``"identity"`` (default) or ``"logit"`` (then ``predict`` returns probabilities).

:func:`load_workload` checks all of this in well under a second (``predict`` is called on
two rows of the background and two of ``X`` only) and turns every problem into a
:class:`WorkloadError` that names the spec and what is wrong.
"""
from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from explainers.kernelshap.engine import LINKS

__all__ = ["DEFAULT_WORKLOAD", "PROBE_ROWS", "Workload", "WorkloadError", "check_instances", "load_workload"]

#: The suite's default ``--workload``: the reference Adult workload of the study.
DEFAULT_WORKLOAD = "explainers.workloads.adult:workload"
#: Rows of the background (and of ``X``) that :func:`load_workload` passes to ``predict``.
PROBE_ROWS = 2
REQUIRED_ATTRIBUTES: tuple[str, ...] = ("name", "predict", "background", "X")


class WorkloadError(ValueError):
    """A ``--workload`` spec that cannot be loaded, or whose workload is malformed; says which and why."""


@dataclass(frozen=True, eq=False, repr=False)
class Workload:
    """A model and the data to explain with it. ``D`` columns, ``M`` players.

    Attributes
    ----------
    name: short name, recorded with every benchmark (e.g. ``"adult"``).
    predict: ``(rows, D)`` float64 -> ``(rows,)`` or ``(rows, K)``; picklable for the workers.
    background: ``(N, D)`` background rows.
    X: ``(n, D)`` the instances to explain.
    groups: ``M`` lists of column indices partitioning ``range(D)``; None: one player per column.
    group_names: ``M`` names; None: defaults (see :func:`load_workload`).
    link: ``"identity"`` or ``"logit"``.

    :func:`load_workload` returns one with float64 C-contiguous read-only arrays and
    ``groups`` and ``group_names`` filled in.
    """

    name: str
    predict: Callable[[np.ndarray], Any]
    background: np.ndarray
    X: np.ndarray
    groups: list[list[int]] | None = None
    group_names: list[str] | None = None
    link: str = "identity"

    def __repr__(self) -> str:
        n_groups = "per column" if self.groups is None else len(self.groups)
        return (
            f"Workload(name={self.name!r}, background={np.shape(self.background)}, X={np.shape(self.X)}, "
            f"groups={n_groups}, link={self.link!r})"
        )


def load_workload(spec: str) -> Workload:
    """Import ``MODULE``, call ``CALLABLE`` of ``spec = "MODULE:CALLABLE"`` and validate its workload.

    Returns a normalised :class:`Workload`: ``background`` ``(N, D)`` and ``X`` ``(n, D)`` as
    read-only C-contiguous float64 copies, ``groups`` as ``M`` lists of ints (one per column
    when missing), ``group_names`` as ``M`` strings (``"x0"``, ``"x1"``, ... for the default
    groups, else the group's index, when missing).

    Raises
    ------
    WorkloadError
        The spec is malformed, the module cannot be imported, the callable is missing, not
        callable or raises, or the object it returns is not a valid workload; the message
        starts with ``--workload SPEC:`` and says what is wrong.
    """
    factory = _resolve(spec)
    try:
        obj = factory()
    except Exception as exc:  # noqa: BLE001 - whatever the team's code raises is reported
        raise WorkloadError(f"--workload {spec}: calling it raised {type(exc).__name__}: {exc}") from exc
    return _validated(spec, obj)


def check_instances(workload: Any, n: int) -> None:
    """A :class:`WorkloadError` unless ``1 <= n <= len(workload.X)`` (``--n-instances`` takes ``X[:n]``)."""
    available = len(workload.X)
    if n > available:
        raise WorkloadError(
            f"--n-instances {n} is above the {available} instances of workload {workload.name!r}: "
            f"use an integer from 1 to {available}"
        )
    if n < 1:
        raise WorkloadError(f"--n-instances {n} is below 1: use an integer from 1 to {available}")


# --------------------------------------------------------------------------- resolving the spec


def _resolve(spec: Any) -> Callable[[], Any]:
    """The callable named by ``spec``."""
    if not isinstance(spec, str):
        raise WorkloadError(f"--workload {spec!r}: must be a string MODULE:CALLABLE, got {type(spec).__name__}")
    module_name, colon, path = spec.strip().partition(":")
    if not colon or not module_name or not path or ":" in path:
        raise WorkloadError(
            f"--workload {spec}: expected MODULE:CALLABLE with one colon, e.g. "
            f"{DEFAULT_WORKLOAD} (the callable is called with no arguments)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkloadError(f"--workload {spec}: module {module_name!r} cannot be imported: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - an import that raises anything else is reported too
        raise WorkloadError(
            f"--workload {spec}: importing module {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    walked = module_name
    for part in path.split("."):
        if not part.isidentifier():
            raise WorkloadError(f"--workload {spec}: {path!r} is not a dotted attribute path")
        try:
            target = getattr(target, part)
        except AttributeError:
            owner = "module " if target is module else ""
            raise WorkloadError(f"--workload {spec}: {owner}{walked!r} has no attribute {part!r}") from None
        walked = f"{walked}.{part}"
    if not callable(target):
        raise WorkloadError(
            f"--workload {spec}: {path!r} is not callable (a {type(target).__name__}); "
            "name a function that returns the workload"
        )
    return target


# --------------------------------------------------------------------------- validating the workload


def _validated(spec: str, obj: Any) -> Workload:
    """The normalised :class:`Workload` of ``obj``, or a WorkloadError naming ``spec``."""

    def fail(message: str) -> WorkloadError:
        return WorkloadError(f"--workload {spec}: {message}")

    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(obj, a)]
    if missing:
        raise fail(
            f"the returned {type(obj).__name__} has no attribute {', '.join(map(repr, missing))} "
            f"(a workload needs {', '.join(REQUIRED_ATTRIBUTES)})"
        )
    name = obj.name
    if not isinstance(name, str) or not name.strip():
        raise fail(f"name must be a non-empty string, got {name!r}")
    predict = obj.predict
    if not callable(predict):
        raise fail(f"predict must be callable, got {type(predict).__name__}")
    background = _matrix(fail, "background", obj.background)
    X = _matrix(fail, "X", obj.X)
    if X.shape[1] != background.shape[1]:
        raise fail(f"X has {X.shape[1]} columns but background has {background.shape[1]}")
    n_columns = background.shape[1]
    given_groups = getattr(obj, "groups", None)
    groups = _groups(fail, given_groups, n_columns)
    group_names = _group_names(fail, getattr(obj, "group_names", None), groups, default_groups=given_groups is None)
    link = getattr(obj, "link", "identity")
    if not isinstance(link, str) or link not in LINKS:
        raise fail(f"unknown link {link!r}: use one of {sorted(LINKS)}")
    background_k = _probe(fail, predict, background, "the background", link)
    X_k = _probe(fail, predict, X, "X", link)
    if background_k != X_k:
        raise fail(f"predict returns {_width(background_k)} for the background but {_width(X_k)} for X")
    return Workload(
        name=name.strip(), predict=predict, background=background, X=X,
        groups=groups, group_names=group_names, link=link,
    )


def _matrix(fail: Callable[[str], WorkloadError], what: str, data: Any) -> np.ndarray:
    """``data`` as a read-only C-contiguous float64 ``(rows, D)`` copy."""
    if hasattr(data, "to_numpy"):  # a DataFrame: its values, in its column order
        data = data.to_numpy()
    try:
        array = np.asarray(data)
    except (TypeError, ValueError) as exc:
        raise fail(f"{what} is not an array: {exc}") from exc
    if array.dtype == object or np.iscomplexobj(array) or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == bool
    ):
        raise fail(f"{what} must hold real numbers, got dtype {array.dtype}")
    if array.ndim != 2:
        raise fail(f"{what} must be 2-D (rows, columns), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise fail(f"{what} is empty (shape {array.shape})")
    array = np.array(array, dtype=np.float64, order="C", copy=True)
    finite = np.isfinite(array)
    if not finite.all():
        row, column = np.argwhere(~finite)[0]
        raise fail(f"{what} contains NaN or inf (first at row {row}, column {column})")
    array.setflags(write=False)
    return array


def _groups(fail: Callable[[str], WorkloadError], groups: Any, n_columns: int) -> list[list[int]]:
    """``groups`` as lists of ints partitioning ``range(n_columns)``; None: one per column."""
    if groups is None:
        return [[j] for j in range(n_columns)]
    if isinstance(groups, (str, bytes, dict)) or not isinstance(groups, (Sequence, np.ndarray)):
        raise fail(f"groups must be a list of lists of column indices, got {type(groups).__name__}")
    if len(groups) == 0:
        raise fail("groups is empty: give at least one group of column indices")
    owner: dict[int, int] = {}
    result = []
    for g, members in enumerate(groups):
        if isinstance(members, (str, bytes, dict)) or not isinstance(members, (Sequence, np.ndarray)):
            raise fail(f"group {g} must be a list of column indices, got {type(members).__name__}")
        if len(members) == 0:
            raise fail(f"group {g} is empty")
        columns = []
        for j in members:
            if isinstance(j, (bool, np.bool_)) or not isinstance(j, numbers.Integral):
                raise fail(f"group {g} holds {j!r}: column indices must be integers")
            if not 0 <= j < n_columns:
                raise fail(f"group {g} holds column {j}, not a valid index for {n_columns} columns (0 to {n_columns - 1})")
            if int(j) in owner:
                raise fail(f"column {j} is in groups {owner[int(j)]} and {g}: groups must not overlap")
            owner[int(j)] = g
            columns.append(int(j))
        result.append(columns)
    uncovered = [j for j in range(n_columns) if j not in owner]
    if uncovered:
        raise fail(f"columns {uncovered} are in no group: groups must cover all {n_columns} columns")
    return result


def _group_names(
    fail: Callable[[str], WorkloadError], names: Any, groups: list[list[int]], *, default_groups: bool
) -> list[str]:
    """``names`` as one string per group; None: ``"x<column>"`` for the default groups, else the index."""
    if names is None:
        return [f"x{g}" if default_groups else str(g) for g in range(len(groups))]
    if isinstance(names, (str, bytes)) or not isinstance(names, (Sequence, np.ndarray)):
        raise fail(f"group_names must be a list of strings, got {type(names).__name__}")
    if len(names) != len(groups):
        raise fail(f"{len(names)} group_names for {len(groups)} groups: give one name per group")
    result = [str(n) for n in names]
    duplicated = sorted({n for n in result if result.count(n) > 1})
    if duplicated:
        raise fail(f"group_names has duplicates {duplicated}")
    return result


def _probe(
    fail: Callable[[str], WorkloadError], predict: Callable[[np.ndarray], Any], data: np.ndarray, what: str, link: str
) -> int | None:
    """Call ``predict`` on the first rows of ``data``; the output's width ``K`` (None for 1-D output)."""
    rows = np.array(data[:PROBE_ROWS])  # a writable copy: the model may not expect read-only input
    where = f"on {len(rows)} row{'s' if len(rows) > 1 else ''} of {what}"
    try:
        out = predict(rows)
    except Exception as exc:  # noqa: BLE001 - whatever the model raises is reported
        raise fail(f"predict raised {type(exc).__name__} {where}: {exc}") from exc
    try:
        out = np.asarray(out)
    except Exception as exc:  # noqa: BLE001
        raise fail(f"predict returned a {type(out).__name__} {where}, not an array: {exc}") from exc
    if out.dtype == object or np.iscomplexobj(out) or not (np.issubdtype(out.dtype, np.number) or out.dtype == bool):
        raise fail(f"predict returned non-numeric output (dtype {out.dtype}) {where}: it must return real numbers")
    if out.ndim not in (1, 2) or out.shape[0] != len(rows):
        raise fail(
            f"predict returned shape {out.shape} {where}: expected ({len(rows)},) or ({len(rows)}, K), "
            "one row of output per input row"
        )
    if not np.isfinite(out).all():
        raise fail(f"predict returned NaN or inf {where}")
    if link == "logit" and not ((out > 0) & (out < 1)).all():
        raise fail(
            f"predict returned values outside (0, 1) {where} (min {out.min():.6g}, max {out.max():.6g}): "
            "link 'logit' needs probabilities; use link 'identity' for other outputs"
        )
    return None if out.ndim == 1 else int(out.shape[1])


def _width(k: int | None) -> str:
    return "shape (rows,)" if k is None else f"shape (rows, {k})"
