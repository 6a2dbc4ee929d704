"""The benchmark record (``explainers.bench.records``): every saved run parses, bad values are
errors naming the field, derived fields follow their inputs, the gates and speedups read it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from explainers.bench.records import (
    FIELD_NAMES,
    FIELDS,
    BenchmarkRecord,
    RecordError,
    field_table_markdown,
    fill_speedups,
    gate_failures,
    infer_suite,
)

ROOT = Path(__file__).resolve().parents[1]
SAVED_RUNS = sorted((ROOT / ".benchmarks").rglob("*.json"))


def _pool(**overrides) -> BenchmarkRecord:
    values = dict(suite="scaling", workload="adult", backend="pool", workers=2, batch_size=5, n_instances=16,
                  nsamples=2072, exact=False, mean_seconds=2.0, seconds=1.9, serial_seconds=4.0)
    values.update(overrides)
    return BenchmarkRecord(**values)


@pytest.mark.parametrize("path", SAVED_RUNS, ids=lambda p: str(p.relative_to(ROOT / ".benchmarks")))
def test_every_saved_run_parses_and_round_trips(path):
    data = json.loads(path.read_text())
    assert data["benchmarks"], path
    for bench in data["benchmarks"]:
        record = BenchmarkRecord.from_extra_info(bench["extra_info"], fullname=bench["fullname"], where=str(path))
        assert record.suite == infer_suite(bench["fullname"]) or bench["extra_info"].get("suite") == record.suite
        again = BenchmarkRecord.from_extra_info(record.to_extra_info(), fullname=bench["fullname"])
        assert again == record


def test_saved_runs_exist():
    assert len(SAVED_RUNS) >= 10


def test_derived_fields_follow_their_inputs():
    record = _pool()
    assert record.speedup == pytest.approx(2.0)
    assert record.efficiency == pytest.approx(1.0)
    assert record.explanations_per_s == pytest.approx(8.0)
    assert record.ms_per_instance == pytest.approx(125.0)
    serial = _pool(backend="serial", workers=None, batch_size=None, serial_seconds=None)
    assert serial.speedup == 1.0
    cpu = _pool(machine_cpu_seconds={"workers": 6.0, "driver": 1.0, "ray": 1.0, "other": 0.5})
    assert cpu.overhead_cpu_share == pytest.approx(0.25)


@pytest.mark.parametrize("overrides, field, text", [
    (dict(workers=0), "workers", "expected a positive integer"),
    (dict(workers=True), "workers", "expected a positive integer"),
    (dict(backend="spark"), "backend", "allowed: 'serial', 'pool', 'serve', 'data'"),
    (dict(backend="serve"), "serve_mode", "missing"),
    (dict(serve_mode="ray"), "serve_mode", "must be null for backend 'pool'"),
    (dict(mean_seconds=float("nan")), "mean_seconds", "expected a number"),
    (dict(serial_rounds="1,2"), "serial_rounds", "expected a list of numbers"),
    (dict(machine_cpu_seconds={"workers": 1.0}), "machine_cpu_seconds", "expected CPU-seconds"),
    (dict(baseline="processes"), "baseline", "a baseline row has no backend"),
])
def test_a_bad_value_names_its_field(overrides, field, text):
    with pytest.raises(RecordError, match=text) as info:
        _pool(**overrides)
    assert info.value.field == field
    assert repr(field) in str(info.value)


def test_an_unknown_field_is_an_error_with_its_place():
    with pytest.raises(RecordError, match=r"run\.json \[pool\]: extra_info field 'speed' is not a field"):
        BenchmarkRecord.from_extra_info({**_pool().to_extra_info(), "speed": 1}, where="run.json [pool]")


def test_old_runs_get_suite_workload_and_engine_role():
    info = {"mode": "exact", "n_instances": 8, "floor_rows": "distinct"}
    record = BenchmarkRecord.from_extra_info(info, fullname="perf/test_engine_speed.py::test_floor[exact-distinct]")
    assert (record.suite, record.workload, record.engine_role) == ("engine", "adult", "floor-distinct")
    with pytest.raises(RecordError, match="names no suite"):
        BenchmarkRecord.from_extra_info(info, fullname="tests/test_other.py::test_x")


def test_field_table_lists_every_field():
    table = field_table_markdown()
    assert len(FIELDS) == len(FIELD_NAMES) == len(set(FIELD_NAMES))
    for name in FIELD_NAMES:
        assert f"| `{name}` |" in table


def test_gates_read_the_record():
    slow = _pool(paired_efficiency=0.4, machine_cpu_seconds={"workers": 2.0, "driver": 1.0, "ray": 1.0, "other": 0.5})
    failures = gate_failures(slow, min_efficiency=0.5, max_overhead_share=0.3, workers=2)
    assert len(failures) == 2
    assert "paired efficiency 0.40 (median speedup 0.80x at 2 workers) is below --min-efficiency 0.5" in failures[0]
    assert "overhead CPU share 0.50" in failures[1]
    assert gate_failures(slow, min_efficiency=None, max_overhead_share=None, workers=2) == []
    assert gate_failures(_pool(paired_efficiency=0.9), min_efficiency=0.5, max_overhead_share=None, workers=2) == []


def test_fill_speedups_uses_the_serial_benchmark_of_the_same_work():
    serial = {"backend": "serial", "n_instances": 16, "nsamples": 2072}
    pool = {"backend": "pool", "workers": 2, "n_instances": 16, "nsamples": 2072, "speedup": None}
    other = {"backend": "pool", "workers": 2, "n_instances": 32, "nsamples": 2072, "speedup": None}
    output = {"benchmarks": [{"extra_info": serial, "stats": {"mean": 6.0}},
                             {"extra_info": pool, "stats": {"mean": 2.0}},
                             {"extra_info": other, "stats": {"mean": 3.0}}]}
    fill_speedups(output)
    assert pool["speedup"] == pytest.approx(3.0) and pool["efficiency"] == pytest.approx(1.5)
    assert other["speedup"] is None


def test_architecture_lists_the_current_fields():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    table = text.split("<!-- record fields -->\n", 1)[1].split("\n<!-- /record fields -->", 1)[0]
    assert table == field_table_markdown(), "regenerate ARCHITECTURE.md's table with field_table_markdown()"
