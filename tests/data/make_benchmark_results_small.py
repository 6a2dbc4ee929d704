"""Regenerate ``tests/data/benchmark_results_small.json`` (used by ``tests/test_report.py``).

The file is a genuine pytest-benchmark 5.x ``--benchmark-json`` output: this script writes a
tiny throw-away test module and conftest in a temporary directory and runs a real pytest
session on it. The timed function is ``time.sleep`` with a duration given by a simple
cost model (per-instance cost, per-batch overhead, per-backend start-up cost, divided by
the number of workers), so the *structure* (machine_info, commit_info, benchmarks, stats
with the per-round ``data``) is real while the numbers are synthetic and cheap to make.
The ``extra_info`` and ``machine_info`` fields follow the "Benchmark records" contract of
ARCHITECTURE.md; ``speedup``/``efficiency`` are filled in at the end of the session from
the serial baseline, as the project's plugin does.

Run from the repository root::

    /work/venv/bin/python tests/data/make_benchmark_results_small.py
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from importlib.metadata import version
from pathlib import Path

OUT = Path(__file__).with_name("benchmark_results_small.json")

CONFTEST = textwrap.dedent(
    '''
    def pytest_benchmark_update_machine_info(config, machine_info):
        machine_info.update(
            ray_version=RAY_VERSION, ray_address_mode="local", ray_nodes=1, ray_cpus=2
        )

    def pytest_benchmark_update_json(config, benchmarks, output_json):
        output_json["note"] = (
            "synthetic timings (time.sleep with a cost model) made by "
            "tests/data/make_benchmark_results_small.py for the report tests"
        )
        serial = [b for b in output_json["benchmarks"] if b["extra_info"]["backend"] == "serial"]
        base = serial[0]["stats"]["mean"] if serial else None
        for bench in output_json["benchmarks"]:
            info = bench["extra_info"]
            speedup = None if base is None else base / bench["stats"]["mean"]
            info["speedup"] = speedup
            info["efficiency"] = None if speedup is None else speedup / info["workers"]
            info["explanations_per_s"] = info["n_instances"] / bench["stats"]["mean"]
    '''
)

TESTS = textwrap.dedent(
    '''
    import math
    import random
    import time

    import pytest

    N_INSTANCES = 64
    PER_INSTANCE_S = 0.0015          # serial cost of one explanation
    PER_BATCH_S = {"pool": 0.0004, "serve": 0.0012, "data": 0.0006}
    STARTUP_S = {"pool": 0.004, "serve": 0.008, "data": 0.02}

    CONFIGS = (
        [("serial", None, 1, None)]
        + [("pool", None, w, b) for b in (1, 5, 10) for w in (1, 2, 4)]
        + [("serve", "ray", w, b) for b in (1, 10) for w in (1, 2, 4)]
        + [("serve", "default", w, b) for b in (5, 10) for w in (1, 2, 4)]
        + [("data", None, w, 10) for w in (1, 2, 4)]
    )


    def config_id(config):
        backend, mode, workers, batch = config
        if backend == "serial":
            return "serial"
        name = backend if mode is None else f"{backend}-{mode}"
        return f"{name}-w{workers}-b{batch}"


    def model_seconds(backend, workers, batch):
        if backend == "serial":
            return N_INSTANCES * PER_INSTANCE_S
        n_batches = math.ceil(N_INSTANCES / batch)
        per_batch = batch * PER_INSTANCE_S + PER_BATCH_S[backend]
        return STARTUP_S[backend] + math.ceil(n_batches / workers) * per_batch


    @pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
    def test_scaling(benchmark, config):
        backend, mode, workers, batch = config
        rng = random.Random(config_id(config))
        seconds = model_seconds(backend, workers, batch)
        benchmark.group = "scaling"
        benchmark.extra_info.update(
            backend=backend, serve_mode=mode, workers=workers, batch_size=batch,
            n_instances=N_INSTANCES, nsamples=2072, exact=False,
            explanations_per_s=None, speedup=None, efficiency=None,
            nodes_used=None if backend == "serial" else 1,
        )
        benchmark.pedantic(
            lambda: time.sleep(seconds * (1.0 + 0.08 * rng.random())), rounds=3, iterations=1
        )
    '''
)


def main() -> int:
    """Run the throw-away benchmark session and write :data:`OUT`; return pytest's exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        conftest = CONFTEST.replace("RAY_VERSION", repr(version("ray")))
        (tmp_path / "conftest.py").write_text(conftest)
        (tmp_path / "test_fake_scaling.py").write_text(TESTS)
        cmd = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-p", "no:kernelshap_ray", f"--benchmark-json={OUT}", "test_fake_scaling.py",
        ]
        return subprocess.call(cmd, cwd=tmp_path)


if __name__ == "__main__":
    raise SystemExit(main())
