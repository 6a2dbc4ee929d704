"""The serial KernelSHAP engine: shap's ``KernelExplainer`` semantics, vectorised and exact-capable.

For an instance ``x`` of ``D`` columns, grouped into ``M`` players, and a background
``B`` of ``N`` rows, the value of a coalition ``S`` is the background-averaged model
output with the players in ``S`` set to ``x``::

    v(S) = link( mean_b f(x_S, B_b) )

The Shapley values are the weighted least-squares fit of ``v`` with the Shapley
kernel, under ``sum(phi) == link(f(x)) - link(mean_b f(B_b))``. With a budget that
covers all ``2**M - 2`` coalitions this is exact; otherwise complete coalition sizes
come first and the rest is sampled in complementary pairs, from a generator seeded
by ``(seed, instance index)`` only.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from explainers.kernelshap import shared_rows
from explainers.kernelshap.chunking import ROW_STRATEGIES, ChunkChoice, candidates, choose_chunk_rows
from explainers.kernelshap.coalition_cache import DEFAULT_REUSE_CACHE_BYTES, CoalitionValueCache
from explainers.kernelshap.coalitions import (
    CoalitionPlan,
    coalition_keys,
    full_plan,
    max_coalitions,
    plan_bytes,
    sampled_plan,
    solve_operator,
)
from explainers.kernelshap.distinct_rows import DEFAULT_DISTINCT_CACHE_BYTES, DistinctRows, RowSet, take
from explainers.kernelshap.row_kernels import build_distinct_rows, compile_kernels, weighted_means
from explainers.kernelshap.shared_rows import INDEX_ENTRIES_PER_ROW, PatternSums, accumulate, build_shared_rows
from explainers.kernelshap.threads import DEFAULT_MODEL_THREADS, check_model_threads, cpu_kernel, limited_threads

Predict = Callable[[np.ndarray], Any]

#: the memory one instance's coalition plan may take by default (see ``max_plan_bytes``)
DEFAULT_MAX_PLAN_BYTES = 2**30


def _identity(p: np.ndarray) -> np.ndarray:
    return p


def _logit(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(p / (1.0 - p))


LINKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"identity": _identity, "logit": _logit}


def _trusted_finite_inputs() -> contextlib.AbstractContextManager[Any]:
    """Skip scikit-learn's NaN/inf scan of every model call (thread-local, undone on exit).

    Synthetic rows mix values of ``X`` and the background, both checked finite already, so
    the scan (a full pass over each chunk) can only repeat that check.
    """
    sklearn = sys.modules.get("sklearn")
    if sklearn is None:
        return contextlib.nullcontext()
    return sklearn.config_context(assume_finite=True)


@dataclass(frozen=True)
class _Buffers:
    """Synthetic rows of one model call, with room for ``x`` as a last row.

    ``rows`` ``(max(chunk_rows, N, S) + 1, D)`` (row-major) for distinct and shared rows, and
    ``index`` int32, ``layout`` ``(4, N)`` int64 and ``patterns`` for shared rows (``index`` is flat, viewed as
    ``(b, S')`` per chunk of ``b`` background rows and ``S'`` coalitions; see
    :func:`~explainers.kernelshap.shared_rows.build_shared_rows`); for every row of ``c``
    coalitions (column-major), ``tile`` ``(D, c, N)`` (the background repeated) and ``dense``
    ``(D, c * N + 1)``.
    """

    rows: np.ndarray
    index: np.ndarray
    layout: np.ndarray
    tile: np.ndarray
    dense: np.ndarray
    patterns: PatternSums | None

    @classmethod
    def for_background(
        cls, background_t: np.ndarray, chunk_rows: int, max_coalitions: int, strategies: tuple[str, ...],
        width: int,
    ) -> _Buffers:
        """Only the buffers ``strategies`` use are allocated; the others are empty. ``width``:
        the model's outputs per row."""
        n_cols, n_bg = background_t.shape
        empty = np.empty((n_cols, 0))
        if "distinct" in strategies or "shared" in strategies:
            rows = np.empty((max(chunk_rows, n_bg, max_coalitions if "shared" in strategies else 0) + 1, n_cols))
        else:
            rows = empty.T
        entries = max(max_coalitions, min(n_bg * max_coalitions, INDEX_ENTRIES_PER_ROW * chunk_rows))
        index = np.empty(entries if "shared" in strategies else 0, dtype=np.int32)
        layout = np.empty((4, n_bg if "shared" in strategies else 0), dtype=np.int64)
        patterns = PatternSums(n_bg, width, len(rows)) if "shared" in strategies else None
        if "dense" not in strategies:
            return cls(rows, index, layout, empty[:, None, :], empty, patterns)
        per_call = max(1, min(chunk_rows // n_bg, max_coalitions))
        tile = np.ascontiguousarray(np.broadcast_to(background_t[:, None, :], (n_cols, per_call, n_bg)))
        return cls(rows, index, layout, tile, np.empty((n_cols, per_call * n_bg + 1)), patterns)


@dataclass(frozen=True)
class RowCounts:
    """Synthetic rows, counted: ``naive`` (coalitions x background rows), ``distinct`` (each
    coalition's distinct rows), ``shared`` (each instance's distinct rows; None above
    :data:`~explainers.kernelshap.shared_rows.MAX_PLAYERS` players) and ``model``, those the
    engine's ``row_strategy_`` gives the model."""

    naive: int
    distinct: int
    shared: int | None
    model: int


def _background_row(row: int) -> str:
    return f"background row {row}"


@dataclass(frozen=True)
class _Output:
    """What the model returns for ``rows`` inputs: ``(rows,)`` if ``k is None`` else ``(rows, k)``."""

    k: int | None

    @property
    def width(self) -> int:
        return 1 if self.k is None else self.k


def column_names(data: Any) -> tuple[str, ...] | None:
    """The column names ``data`` carries (a ``pandas.DataFrame``'s columns), else None."""
    columns = getattr(data, "columns", None)
    if columns is None or not hasattr(data, "to_numpy"):
        return None
    return tuple(str(c) for c in columns)


def _in_column_order(name: str, data: Any, names: tuple[str, ...] | None) -> Any:
    """``data`` with its named columns put in the order ``names``; data without names as it is.

    A ``ValueError`` names the columns that are missing or unexpected.
    """
    own = column_names(data)
    if names is None or own is None or own == names:
        return data
    if len(set(own)) != len(own) or set(own) != set(names):
        missing = [c for c in names if c not in own]
        unexpected = [c for c in own if c not in names]
        duplicated = sorted({c for c in own if own.count(c) > 1})
        raise ValueError(
            f"{name}'s columns do not match the background's: missing {missing}, "
            f"unexpected {unexpected}, duplicated {duplicated}"
        )
    return data[list(data.columns[[own.index(c) for c in names]])]


def _as_2d_float(name: str, data: Any, n_columns: int | None = None) -> np.ndarray:
    """``data`` as a C-contiguous ``(n, D)`` float64 array, or a ``ValueError`` saying what is wrong."""
    if hasattr(data, "to_numpy"):
        data = data.to_numpy()
    try:
        array = np.asarray(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric 2-D array: {exc}") from exc
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise ValueError(f"{name} must be real-valued, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if n_columns is not None and array.shape[1] != n_columns:
        raise ValueError(f"{name} has {array.shape[1]} columns, the background has {n_columns}")
    array = np.ascontiguousarray(array, dtype=np.float64)
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(f"{name} contains NaN or inf (first at row {bad[0]}, column {bad[1]})")
    return array


def _check_groups(
    groups: Sequence[Sequence[int]] | None, group_names: Sequence[str] | None, n_columns: int
) -> tuple[list[list[int]], list[str], np.ndarray]:
    """Validate a partition of the columns into players.

    Returns the groups, their names and ``column_player`` of shape ``(D,)``: the player of each column.
    """
    if groups is None:
        groups = [[j] for j in range(n_columns)]
    if isinstance(groups, dict):
        raise ValueError(
            "groups must be a list of lists of column indices, got dict: for named groups pass "
            "groups=list(d.values()), group_names=list(d)"
        )
    if isinstance(groups, (str, bytes)) or not isinstance(groups, (Sequence, np.ndarray)):
        raise ValueError(f"groups must be a list of lists of column indices, got {type(groups).__name__}")
    for g, members in enumerate(groups):
        if isinstance(members, (str, bytes, dict)) or not isinstance(members, (Sequence, np.ndarray)):
            raise ValueError(f"group {g} must be a list of column indices, got {type(members).__name__}")
    groups = [list(g) for g in groups]
    if not groups:
        raise ValueError("groups is empty: give at least one group of column indices")
    column_player = np.full(n_columns, -1, dtype=np.intp)
    for g, members in enumerate(groups):
        if not members:
            raise ValueError(f"group {g} is empty")
        for j in members:
            if isinstance(j, (bool, np.bool_)) or not isinstance(j, (int, np.integer)):
                raise ValueError(f"group {g} holds {j!r}: column indices must be integers")
            if not 0 <= j < n_columns:
                raise ValueError(f"group {g} holds column {j}, out of range for {n_columns} columns")
            if column_player[j] != -1:
                raise ValueError(f"column {j} is in groups {column_player[j]} and {g}: groups must not overlap")
            column_player[j] = g
    missing = np.flatnonzero(column_player == -1)
    if missing.size:
        raise ValueError(f"columns {missing.tolist()} are in no group: groups must cover every column")
    if group_names is None:
        group_names = [str(g) for g in range(len(groups))]
    group_names = [str(n) for n in group_names]
    if len(group_names) != len(groups):
        raise ValueError(f"{len(group_names)} group_names for {len(groups)} groups")
    return groups, group_names, column_player


def _check_plan_memory(
    nsamples: int | str, n_coalitions: int, n_players: int, n_outputs: int, max_plan_bytes: int
) -> None:
    """Refuse a coalition budget whose plan would take more than ``max_plan_bytes``
    (checked before the first model call, and again once the number of outputs is known)."""
    need = plan_bytes(n_coalitions, n_players, n_outputs)
    if need > max_plan_bytes:
        raise ValueError(
            f"nsamples={nsamples} for {n_players} players needs about {need / 2**20:.0f} MB per "
            f"instance, above max_plan_bytes={max_plan_bytes} ({max_plan_bytes / 2**20:.0f} MB): "
            "lower nsamples or raise max_plan_bytes"
        )


def _resolve_nsamples(nsamples: int | str, n_players: int) -> int:
    if isinstance(nsamples, str):
        if nsamples != "auto":
            raise ValueError(f"nsamples must be 'auto' or an int >= 2, got {nsamples!r}")
        nsamples = 2 * n_players + 2048
    elif isinstance(nsamples, (bool, np.bool_)) or not isinstance(nsamples, (int, np.integer)):
        raise ValueError(f"nsamples must be 'auto' or an int >= 2, got {nsamples!r}")
    elif nsamples < 2:
        raise ValueError(f"nsamples must be >= 2, got {nsamples}")
    return int(min(nsamples, max_coalitions(n_players)))


class KernelShap:
    """Serial KernelSHAP with the semantics of ``shap.KernelExplainer(l1_reg=False)``.

    Parameters
    ----------
    predict:
        Model function: ``(rows, D)`` float64 array to ``(rows,)`` or ``(rows, K)``.
    background:
        ``(N, D)`` rows whose average stands for "feature unknown".
    groups:
        ``M`` lists of column indices partitioning ``range(D)``; one player each. Default: one per column.
    group_names:
        ``M`` names, for reports.
    link:
        ``"identity"`` or ``"logit"``, applied to the background-averaged output.
    nsamples:
        Coalitions per instance: ``"auto"`` (``2 M + 2048``) or an int ``>= 2``; capped at
        ``2**M - 2``, where every coalition is enumerated and the values are exact.
    seed:
        Seeds the sampled coalitions of instance ``i`` through ``(seed, i)``.
    chunk_rows:
        Synthetic rows per model call (memory is bounded by this, not by the instance count):
        ``"auto"`` (default) measures, once, which of 4096-65536 rows is fastest on this CPU
        for this model (under 1 s; see :mod:`explainers.kernelshap.chunking`); ``chunk_rows_`` is the
        size used and ``chunk_choice_`` how it was chosen. An int is used as given.
    row_strategy:
        ``"shared"``: the model sees each distinct synthetic row of an instance once, shared by
        every coalition that gives it (a background row that holds ``x``'s values on a player
        gives the same row with or without that player; :mod:`explainers.kernelshap.shared_rows`;
        up to 62 players); ``"distinct"``: each distinct synthetic row of a coalition once,
        weighted by the background rows it stands for (:mod:`explainers.kernelshap.distinct_rows`,
        written by :mod:`explainers.kernelshap.row_kernels`); ``"dense"``: every row (cheaper where
        nearly every synthetic row is distinct, as with continuous features); ``"auto"``
        (default): whichever is fastest here, measured with ``chunk_rows`` (``row_strategy_`` is
        the one used; on the Adult workload, shared: 0.03 of the naive rows exact, 0.06 sampled).
    model_threads:
        BLAS/OpenMP threads of the engine's own model calls and solves (default 1), whatever
        the calling process has; ``None`` leaves the caller's. With a fixed count the values
        are the same bits in the caller and in every Ray worker (OpenBLAS changes last bits
        with the thread count); a model that gains from threads (a large MLP) may set more,
        and then every process that computes must be able to run that many.
    reuse_coalitions:
        Reuse a coalition's value for every later instance (of this and later ``explain``
        calls of this object, i.e. of the same worker) that agrees with the instance that
        computed it on the coalition's players. Values then agree with the default within
        1e-12, not bitwise: which instance computed a value first can change its last bit.
        ``reuse_stats`` reports the hit rate and memory. A lookup costs about as much as a
        coalition's share of the shared rows of a cheap model: it pays where a model row costs
        much more than writing it (on the Adult logistic regression it does not).
    reuse_cache_bytes:
        The most memory the reused values may take (default 256 MiB per engine, i.e. per
        worker); once full, the cache keeps what it has.
    max_plan_bytes:
        The memory one instance's coalitions and their solve may take (default 1 GiB); a larger
        ``nsamples`` for the number of players is a ``ValueError``.

    Column names: when ``background`` is a ``pandas.DataFrame``, its column names are kept
    (``feature_names_``) and an ``X`` that carries names too is taken by name, in the
    background's order; names missing from ``X``, or not in the background, are a
    ``ValueError``. An ``X`` without names (an array) is taken by position.

    Model output must be finite real numbers (and in (0, 1) under the logit link): anything
    else is a ``ValueError`` naming the instance, coalition and background row it came from.

    Values are a function of the instance, the parameters above (``chunk_rows_``,
    ``row_strategy_`` and ``model_threads`` included) and
    the CPU kernel (``cpu_kernel_``: the CPU model and the BLAS build and code path): the
    same engine gives the same bits for an instance in any process on the same kernel,
    whatever else that process explains, in which order or with which threads.
    """

    def __init__(
        self,
        predict: Predict,
        background: Any,
        *,
        groups: Sequence[Sequence[int]] | None = None,
        group_names: Sequence[str] | None = None,
        link: str = "identity",
        nsamples: int | str = "auto",
        seed: int = 0,
        chunk_rows: int | str = "auto",
        row_strategy: str = "auto",
        model_threads: int | None = DEFAULT_MODEL_THREADS,
        reuse_coalitions: bool = False,
        reuse_cache_bytes: int = DEFAULT_REUSE_CACHE_BYTES,
        max_plan_bytes: int = DEFAULT_MAX_PLAN_BYTES,
    ) -> None:
        if not callable(predict):
            raise ValueError(f"predict must be callable, got {type(predict).__name__}")
        if link not in LINKS:
            raise ValueError(f"unknown link {link!r}: use one of {sorted(LINKS)}")
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if chunk_rows != "auto" and (
            isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1
        ):
            raise ValueError(f"chunk_rows must be 'auto' or a positive int, got {chunk_rows!r}")
        if row_strategy != "auto" and row_strategy not in ROW_STRATEGIES:
            raise ValueError(f"row_strategy must be 'auto' or one of {list(ROW_STRATEGIES)}, got {row_strategy!r}")
        if not isinstance(reuse_coalitions, (bool, np.bool_)):
            raise ValueError(f"reuse_coalitions must be True or False, got {reuse_coalitions!r}")
        if isinstance(reuse_cache_bytes, bool) or not isinstance(reuse_cache_bytes, (int, np.integer)) \
                or reuse_cache_bytes < 0:
            raise ValueError(f"reuse_cache_bytes must be a non-negative int, got {reuse_cache_bytes!r}")
        if isinstance(max_plan_bytes, bool) or not isinstance(max_plan_bytes, (int, np.integer)) or max_plan_bytes < 1:
            raise ValueError(f"max_plan_bytes must be a positive int, got {max_plan_bytes!r}")
        self.predict = predict
        self.feature_names_ = column_names(background)
        if self.feature_names_ is not None and len(set(self.feature_names_)) != len(self.feature_names_):
            duplicated = sorted({c for c in self.feature_names_ if self.feature_names_.count(c) > 1})
            raise ValueError(f"background has duplicate column names {duplicated}")
        self.background = _as_2d_float("background", background)
        self.groups, self.group_names, self._column_player = _check_groups(
            groups, group_names, self.background.shape[1]
        )
        self.link = link
        self.seed = int(seed)
        self.chunk_rows = chunk_rows
        self.row_strategy = row_strategy
        self.model_threads = check_model_threads(model_threads)
        self.reuse_coalitions = bool(reuse_coalitions)
        self.reuse_cache_bytes = int(reuse_cache_bytes)
        self.max_plan_bytes = int(max_plan_bytes)
        if row_strategy == "shared" and self.n_groups > shared_rows.MAX_PLAYERS:
            raise ValueError(f"row_strategy 'shared' takes at most {shared_rows.MAX_PLAYERS} players, "
                             f"got {self.n_groups}: use 'distinct', 'dense' or 'auto'")
        self.nsamples_ = _resolve_nsamples(nsamples, self.n_groups)
        self.nsamples = nsamples
        _check_plan_memory(nsamples, self.nsamples_, self.n_groups, 1, self.max_plan_bytes)

        self.model_rows_ = 0
        with limited_threads(self.model_threads):
            base = self._call_model(self.background, expected=None, where=_background_row)
            self._output = _Output(None if base.ndim == 1 else base.shape[1])
            _check_plan_memory(nsamples, self.nsamples_, self.n_groups, self._output.width, self.max_plan_bytes)
            self._fnull = base.reshape(len(self.background), -1).mean(axis=0)
            self._link_fnull = self._apply_link(self._fnull, "the background's mean output")
            self._runs = self._column_runs()
            self._background_t = np.ascontiguousarray(self.background.T)
            self._distinct = DistinctRows(self.background, self._column_player, DEFAULT_DISTINCT_CACHE_BYTES)
            # the exact plan, its operator and its distinct rows do not depend on the instance
            self._full = full_plan(self.n_groups) if self.exact and self.n_groups > 1 else None
            self._full_operator = solve_operator(self._full) if self._full is not None else None
            self._full_rows: RowSet | None = None
            #: exact mode with shared rows: what each background pattern met so far was worked out to
            #: be (the same for every instance), from the first instance on; not pickled
            self.pattern_cache_: shared_rows.PatternCache | None = None
            self._full_keys = coalition_keys(self._full.masks) \
                if self._full is not None and self.n_groups <= shared_rows.MAX_PLAYERS else None
            self.chunk_choice_: ChunkChoice = self._choose_chunk_rows()
        self.chunk_rows_ = self.chunk_choice_.rows
        #: synthetic rows this object's ``explain`` calls gave the model (without the ``f(x)`` rows)
        self.model_rows_ = 0  # the calibration's rows are not counted
        self.row_strategy_ = self.chunk_choice_.strategy
        #: the CPU kernel the values depend on, where the engine was built (see :mod:`explainers.kernelshap.threads`)
        self.cpu_kernel_ = cpu_kernel()
        self._reuse = (
            CoalitionValueCache(self._column_player, self._output.width, self.reuse_cache_bytes)
            if self.reuse_coalitions else None
        )

    # ----------------------------------------------------------------- properties
    @property
    def n_groups(self) -> int:
        """``M``, the number of players."""
        return len(self.groups)

    @property
    def n_columns(self) -> int:
        """``D``, the number of model input columns."""
        return self.background.shape[1]

    @property
    def exact(self) -> bool:
        """Whether every coalition is evaluated (the values are the exact Shapley values)."""
        return self.nsamples_ >= max_coalitions(self.n_groups)

    @property
    def expected_value(self) -> float | np.ndarray:
        """``link(mean_b f(B_b))``: a float for 1-D model output, else shape ``(K,)``."""
        if self._output.k is None:
            return float(self._link_fnull[0])
        return self._link_fnull.copy()

    @property
    def reuse_stats(self) -> dict[str, Any] | None:
        """With ``reuse_coalitions``: hits, misses, hit_rate, entries, bytes, max_bytes, full
        of this object's cache (in a worker: that worker's); else None."""
        return None if self._reuse is None else self._reuse.stats

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_full_rows"] = None  # found again where it is used
        state["pattern_cache_"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.row_strategy_ == "distinct":
            compile_kernels()  # in a worker: when it receives the engine, not in its first timed call
        elif self.row_strategy_ == "shared":
            shared_rows.compile_kernels()

    # ----------------------------------------------------------------- public API
    def check_X(self, X: Any) -> np.ndarray:
        """``X`` validated as a ``(n, D)`` float64 array; a 1-D ``X`` is one instance.

        Named columns (a ``DataFrame``) are put in the background's order first.
        """
        return _as_2d_float("X", _in_column_order("X", X, self.feature_names_), self.n_columns)

    def explain(
        self, X: Any, *, offset: int = 0, callback: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Shapley values of each row of ``X``.

        ``X``: ``(n, D)`` (or ``(D,)`` for one instance). Row ``i`` is instance number
        ``offset + i`` of the whole request, which fixes its sampled coalitions.
        ``callback(k)`` is called as each ``k`` more instances are done.

        Returns ``(n, M)`` for 1-D model output, ``(n, M, K)`` for ``(rows, K)`` output.
        """
        X = self.check_X(X)
        if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        n = X.shape[0]
        phi = np.empty((n, self.n_groups, self._output.width))
        buffer = self._new_buffer(self.chunk_rows_, (self.row_strategy_,))
        with _trusted_finite_inputs(), limited_threads(self.model_threads):
            for i in range(n):
                phi[i] = self._explain_one(X[i], int(offset) + i, buffer)
                if callback is not None:
                    callback(1)
        return phi[:, :, 0] if self._output.k is None else phi

    def rows_per_instance(self, X: Any, *, offset: int = 0) -> RowCounts:
        """The synthetic rows of the rows of ``X``, summed, by how they are counted (see
        :class:`RowCounts`), without reuse across instances and without the ``f(x)`` rows."""
        X = self.check_X(X)
        naive = distinct = shared = 0
        countable = self.n_groups <= shared_rows.MAX_PLAYERS
        for i in range(len(X)):
            plan, players = self._plan(X[i], offset + i)
            if plan is not None:
                naive += len(plan) * len(self.background)
                distinct += self._rows_of(plan, players).n_rows
                if countable:
                    keys = coalition_keys(self._masks(plan, players))
                    shared += shared_rows.shared_row_count(self.background, X[i], self._column_player, keys)
        model = {"dense": naive, "distinct": distinct, "shared": shared}[self.row_strategy_]
        return RowCounts(naive, distinct, shared if countable else None, model)

    # ----------------------------------------------------------------- internals
    def _apply_link(self, mean_output: np.ndarray, what: str | Callable[[int], str]) -> np.ndarray:
        """``link(mean_output)``; a ``ValueError`` naming ``what`` (or ``what(row)``) unless finite."""
        linked = LINKS[self.link](mean_output)
        if not np.isfinite(linked).all():
            row = int(np.argwhere(~np.isfinite(linked))[0][0])
            label = what(row) if callable(what) else what
            value = np.asarray(mean_output).reshape(len(np.atleast_1d(mean_output)), -1)[row]
            raise ValueError(
                f"the logit link needs model output in (0, 1): {label} is {value.tolist()}; "
                "use link='identity' for outputs that are not probabilities"
            )
        return linked

    def _call_model(
        self, rows: np.ndarray, expected: _Output | None, where: Callable[[int], str]
    ) -> np.ndarray:
        """``predict(rows)`` as float64, checked finite and against the output shape seen first.

        ``where(r)`` says, for an error, what row ``r`` of ``rows`` stands for.
        """
        out = np.asarray(self.predict(rows))
        if np.iscomplexobj(out):
            raise ValueError(f"predict returned complex output (dtype {out.dtype}): it must be real")
        if out.dtype == object or not np.issubdtype(out.dtype, np.number):
            raise ValueError(f"predict returned non-numeric output of dtype {out.dtype}")
        if out.ndim not in (1, 2) or out.shape[0] != rows.shape[0]:
            raise ValueError(
                f"predict returned shape {out.shape} for {rows.shape[0]} rows: "
                "expected (rows,) or (rows, outputs)"
            )
        if expected is not None:
            k = None if out.ndim == 1 else out.shape[1]
            if k != expected.k:
                want = "(rows,)" if expected.k is None else f"(rows, {expected.k})"
                raise ValueError(f"predict changed its output shape: {out.shape} now, {want} before")
        out = out.astype(np.float64, copy=False)
        finite = np.isfinite(out)
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0])
            bad = out.reshape(len(out), -1)[row]
            kind = "NaN" if np.isnan(bad).any() else "inf"
            raise ValueError(f"predict returned {kind} for {where(row)}: model output must be finite")
        return out

    def _varying_players(self, x: np.ndarray) -> np.ndarray:
        """Players whose columns differ from some background row (shap's ``varying_groups``)."""
        differs = ~np.isclose(self.background, x[None, :], equal_nan=True)
        column_varies = differs.any(axis=0)
        varies = np.zeros(self.n_groups, dtype=bool)
        np.logical_or.at(varies, self._column_player, column_varies)
        return np.flatnonzero(varies)

    def _column_runs(self) -> list[list[tuple[int, int]]]:
        """For each player, its columns as ``(start, stop)`` runs of consecutive indices."""
        runs: list[list[tuple[int, int]]] = []
        for members in self.groups:
            cols = sorted(members)
            player_runs: list[tuple[int, int]] = []
            start = prev = cols[0]
            for j in cols[1:]:
                if j != prev + 1:
                    player_runs.append((start, prev + 1))
                    start = j
                prev = j
            player_runs.append((start, prev + 1))
            runs.append(player_runs)
        return runs

    def _new_buffer(self, chunk_rows: int, strategies: tuple[str, ...]) -> "_Buffers":
        """Reused buffers of one :meth:`explain` call for ``chunk_rows`` rows per model call."""
        return _Buffers.for_background(self._background_t, chunk_rows, self.nsamples_, strategies, self._output.width)

    def _plan(self, x: np.ndarray, index: int) -> tuple[CoalitionPlan | None, np.ndarray]:
        """Instance ``index``'s plan (None if it has fewer than two varying players) and the
        players it is over (``plan.masks`` column ``j`` is player ``players[j]``)."""
        m = self.n_groups
        if self._full is not None:
            return self._full, np.arange(m)
        if m == 1:
            return None, np.arange(1)
        players = self._varying_players(x)
        if len(players) < 2:
            return None, players
        rng = np.random.default_rng([self.seed, index])
        return sampled_plan(len(players), _resolve_nsamples(self.nsamples, len(players)), rng), players

    def _masks(self, plan: CoalitionPlan, players: np.ndarray) -> np.ndarray:
        """``(S, M)``: the plan's coalitions over all players."""
        if len(players) == self.n_groups:
            return plan.masks
        masks = np.zeros((len(plan), self.n_groups), dtype=bool)
        masks[:, players] = plan.masks
        return masks

    def _rows_of(self, plan: CoalitionPlan, players: np.ndarray) -> RowSet:
        """The distinct background rows of each of the plan's coalitions."""
        if plan is self._full:
            if self._full_rows is None:
                self._full_rows = self._distinct.of(plan.masks)
            return self._full_rows
        return self._distinct.of(self._masks(plan, players))

    def _choose_chunk_rows(self) -> ChunkChoice:
        """``chunk_rows`` and ``row_strategy`` as given, or measured on this CPU for this model
        (see :mod:`explainers.kernelshap.chunking`)."""
        x = self.background[0]
        plan, players = self._plan(x, 0)
        if self.row_strategy != "auto":
            strategies = [self.row_strategy]
        else:
            strategies = [s for s in ROW_STRATEGIES if s != "shared" or self.n_groups <= shared_rows.MAX_PLAYERS]
        if self.chunk_rows != "auto":
            sizes = [int(self.chunk_rows)]
        elif plan is None:
            sizes = [len(self.background)]
        else:
            sizes = candidates(len(plan) * len(self.background), self.n_columns)
        if plan is None:
            return ChunkChoice(sizes[0], strategies[0], "whole instance")
        if "distinct" in strategies:
            compile_kernels()  # before the clock: the first compilation on a machine takes seconds
        if "shared" in strategies:
            shared_rows.compile_kernels()
        masks = self._masks(plan, players)
        rows = self._rows_of(plan, players) if "distinct" in strategies else None
        buffers: dict[int, _Buffers] = {}

        def buffer_for(size: int) -> _Buffers:  # made once per size, not once per timing
            if size not in buffers:
                buffers[size] = self._new_buffer(size, tuple(strategies))
            return buffers[size]

        def time_chunk(strategy: str, size: int) -> float:
            # as many coalitions as one call of ``explain`` holds: up to ``size`` model rows,
            # distinct rows for the distinct strategy (a call of ``size`` naive rows would hold
            # fewer model rows, and fit in caches the real call does not)
            if strategy == "shared":  # one chunk: its time per naive row of its background rows
                began = time.perf_counter()
                with _trusted_finite_inputs():
                    *_, n_background = self._shared_values(x, 0, masks, buffer_for(size), size, max_chunks=1)
                return (time.perf_counter() - began) / (n_background * len(masks))
            part = None
            if strategy == "distinct":
                stop = max(1, min(len(masks), int(np.searchsorted(rows.starts, size, side="right")) - 1))
                part = take(rows, np.arange(stop))
            else:
                stop = max(1, min(len(masks), size // len(self.background)))
            buffer = buffer_for(size)
            began = time.perf_counter()
            with _trusted_finite_inputs():
                self._coalition_values(x, 0, masks[:stop], part, buffer, size, strategy)
            return (time.perf_counter() - began) / (stop * len(self.background))

        predict = getattr(self.predict, "__func__", self.predict)
        owner = type(getattr(self.predict, "__self__", None))
        key = (getattr(predict, "__qualname__", repr(type(predict))), owner.__qualname__, self.background.shape,
               self.n_groups, self.nsamples_, self._output.width, self.model_threads, tuple(sizes), tuple(strategies))
        return choose_chunk_rows(key, sizes, strategies, time_chunk)

    def _coalition_values(
        self, x: np.ndarray, index: int, masks: np.ndarray, rows: RowSet | None, buffers: _Buffers,
        chunk_rows: int, strategy: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Background-averaged output of every coalition of ``masks``, and ``f(x)``, the model
        seeing each coalition's distinct rows once (``strategy == "distinct"``) or every row
        (``"dense"``, :meth:`_dense_values`).

        ``x`` is instance ``index`` of the request (for errors); ``masks``: ``(S, M)`` bool and
        ``rows`` their distinct background rows. Returns ``(S, K')`` and ``(K',)`` with
        ``K' = max(K, 1)``, both before the link.

        Whole coalitions go to the model together, up to ``chunk_rows`` synthetic rows (one
        coalition alone may have up to ``N``). Their rows are built row-major in ``buffers.rows``
        ``(>= chunk_rows + 1, D)`` by :func:`~explainers.kernelshap.row_kernels.build_distinct_rows`,
        and their means weighted by the rows each stands for in a fixed order
        (:func:`~explainers.kernelshap.row_kernels.weighted_means`). The first call carries ``x``
        itself as its last row, which gives ``f(x)``.
        """
        if strategy == "dense":
            return self._dense_values(x, index, masks, buffers)
        if strategy == "shared":
            values, fx, _ = self._shared_values(x, index, masks, buffers, chunk_rows)
            return values, fx
        assert rows is not None
        buffer = buffers.rows
        n_bg = len(self.background)
        starts = rows.starts
        values = np.empty((len(masks), self._output.width))
        fx = None
        first = 0
        while first < len(masks):
            stop = int(np.searchsorted(starts, starts[first] + chunk_rows, side="right")) - 1
            stop = min(max(stop, first + 1), len(masks))
            lo = int(starts[first])
            n_rows = build_distinct_rows(self.background, x, self._column_player, masks, rows, first, stop, buffer)

            def where(row: int, first: int = first, stop: int = stop, lo: int = lo, n_rows: int = n_rows) -> str:
                if row == n_rows:
                    return f"instance {index} itself"
                s = first + int(np.searchsorted(starts[first:stop], lo + row, side="right")) - 1
                background_row = int(rows.pool_rows[rows.begin[s] + lo + row - starts[s]])
                return f"instance {index} (coalition {s}, background row {background_row})"

            out, fx = self._call_chunk(buffer[: n_rows + 1], x, fx, where)
            weighted_means(out, rows, first, stop, n_bg, values[first:stop])
            first = stop
        if fx is None:
            fx = self._call_model(x[None, :], self._output, lambda _: f"instance {index} itself").reshape(-1)
        return values, fx

    def _call_chunk(
        self, block: np.ndarray, x: np.ndarray, fx: np.ndarray | None, where: Callable[[int], str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The model's output ``(n_rows, K')`` on the first ``n_rows`` rows of ``block``
        ``(n_rows + 1, D)``, and ``f(x)`` ``(K',)``: ``fx`` if known, else from ``x`` written to
        the last row and riding along."""
        n_rows = len(block) - 1
        self.model_rows_ += n_rows
        if fx is not None:
            return self._call_model(block[:n_rows], self._output, where).reshape(n_rows, -1), fx
        block[n_rows] = x
        out = self._call_model(block, self._output, where).reshape(n_rows + 1, -1)
        return out[:-1], out[-1].copy()

    def _shared_values(
        self, x: np.ndarray, index: int, masks: np.ndarray, buffers: _Buffers, chunk_rows: int,
        max_chunks: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """:meth:`_coalition_values` with each distinct synthetic row of the instance once, shared
        by all its coalitions (``strategy == "shared"``, :mod:`explainers.kernelshap.shared_rows`).

        Chunks of consecutive background rows go to the model; each coalition's total over them
        is summed pattern by pattern (:class:`~explainers.kernelshap.shared_rows.PatternSums`), or
        in background order where the patterns' index would not fit. With ``max_chunks``, only
        that many chunks are evaluated (for the calibration: the values are then partial). Returns the values ``(S, K')``,
        ``f(x)`` ``(K',)`` and how many background rows were covered.
        """
        full = masks is getattr(self._full, "masks", None)
        keys = self._full_keys if full else coalition_keys(masks)
        n_bg, n_coalitions = len(self.background), len(masks)
        if full and self.pattern_cache_ is None and self.n_groups <= shared_rows.PATTERN_CACHE_MAX_PLAYERS:
            self.pattern_cache_ = shared_rows.PatternCache(self.n_groups, n_coalitions)
        totals = np.zeros((n_coalitions, self._output.width))
        max_background = max(1, min(n_bg, len(buffers.index) // max(n_coalitions, 1)))
        chunk_index = buffers.index[: max_background * n_coalitions].reshape(max_background, n_coalitions)
        patterns = buffers.patterns if buffers.patterns is not None and buffers.patterns.fits(n_coalitions) else None
        if patterns is not None:
            patterns.start(n_coalitions)
        fx = None
        first = chunks = 0
        while n_coalitions and first < n_bg and (max_chunks is None or chunks < max_chunks):
            stop, n_rows, n_patterns = build_shared_rows(
                self.background, x, self._column_player, keys, self.n_groups, first, chunk_rows, max_background,
                buffers.rows, chunk_index, buffers.layout, self.pattern_cache_ if full else None)

            def where(row: int, first: int = first, stop: int = stop, n_rows: int = n_rows) -> str:
                if row == n_rows:
                    return f"instance {index} itself"
                pattern_of, row_base = buffers.layout[:2, : stop - first]
                i = int(np.searchsorted(row_base, row, side="right")) - 1
                s = int(np.flatnonzero(chunk_index[pattern_of[i]] == row - row_base[i])[0])
                return f"instance {index} (coalition {s}, background row {first + i})"

            out, fx = self._call_chunk(buffers.rows[: n_rows + 1], x, fx, where)
            if patterns is not None:
                patterns.add(out, chunk_index, buffers.layout, stop - first, n_patterns, whole=first == 0 and stop == n_bg)
            else:
                accumulate(out, chunk_index, buffers.layout, stop - first, n_patterns, totals)
            first, chunks = stop, chunks + 1
        if patterns is not None and chunks:
            patterns.fold(totals)
        if fx is None:
            fx = self._call_model(x[None, :], self._output, lambda _: f"instance {index} itself").reshape(-1)
        return totals / n_bg, fx, first

    def _dense_values(
        self, x: np.ndarray, index: int, masks: np.ndarray, buffers: _Buffers
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_coalition_values` with every background row of every coalition
        (``strategy == "dense"``): faster where a model row costs less than gathering one.

        The rows of ``c`` coalitions are built column-major in ``buffers.dense``: per player and
        run of its columns, a copy of the tiled background's run, then one assignment of ``x``
        to the coalitions that hold the player.
        """
        tile, buffer = buffers.tile, buffers.dense
        n_cols, per_call, n_bg = tile.shape
        values = np.empty((len(masks), self._output.width))
        fx = None
        for start in range(0, len(masks), per_call):
            chunk = masks[start : start + per_call]
            n_rows = len(chunk) * n_bg
            block = buffer[:, :n_rows].reshape(n_cols, len(chunk), n_bg)
            for player, player_runs in enumerate(self._runs):
                selected = chunk[:, player]
                for lo, hi in player_runs:  # the runs cover every column once
                    # copied and overwritten run by run, while the run's rows are still in cache
                    block[lo:hi] = tile[lo:hi, : len(chunk), :]
                    block[lo:hi, selected, :] = x[lo:hi, None, None]

            def where(row: int, first: int = start, n_rows: int = n_rows) -> str:
                if row == n_rows:
                    return f"instance {index} itself"
                return f"instance {index} (coalition {first + row // n_bg}, background row {row % n_bg})"

            out, fx = self._call_chunk(buffer[:, : n_rows + 1].T, x, fx, where)
            # averaging along a contiguous axis is ~10x faster than across the (rows, K) layout
            by_output = np.ascontiguousarray(out.T).reshape(-1, len(chunk), n_bg)
            values[start : start + len(chunk)] = by_output.mean(axis=2).T
        if fx is None:
            fx = self._call_model(x[None, :], self._output, lambda _: f"instance {index} itself").reshape(-1)
        return values, fx

    def _explain_one(self, x: np.ndarray, index: int, buffer: _Buffers) -> np.ndarray:
        """Shapley values ``(M, K')`` of one instance, the ``index``-th of the request."""
        plan, players = self._plan(x, index)
        phi = np.zeros((self.n_groups, self._output.width))
        if plan is None:
            fx = self._call_model(x[None, :], self._output, lambda _: f"instance {index} itself").reshape(-1)
            delta = self._apply_link(fx, f"f(x) of instance {index}") - self._link_fnull
            if len(players) == 1:
                phi[players[0]] = delta
            return phi
        a, b = self._full_operator if plan is self._full else solve_operator(plan)
        distinct = self.row_strategy_ == "distinct"
        masks = self._masks(plan, players)
        rows = self._rows_of(plan, players) if distinct else None
        if self._reuse is None:
            values, fx = self._coalition_values(x, index, masks, rows, buffer, self.chunk_rows_, self.row_strategy_)
        else:
            hit, values, pending = self._reuse.lookup(x, masks)
            missing = np.flatnonzero(~hit)
            computed, fx = self._coalition_values(
                x, index, masks[missing], take(rows, missing) if distinct else None, buffer,
                self.chunk_rows_, self.row_strategy_,
            )
            values[missing] = computed
            self._reuse.store(pending, missing, computed)
        delta = self._apply_link(fx, f"f(x) of instance {index}") - self._link_fnull
        linked = self._apply_link(values, lambda s: f"the mean output of instance {index}'s coalition {s}")
        phi[players] = a @ (linked - self._link_fnull) + b[:, None] * delta
        return phi
