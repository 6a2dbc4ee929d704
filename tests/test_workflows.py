"""The GitHub workflows in .github/workflows/, checked offline (they cannot run here).

* Every workflow validates against GitHub's workflow schema, as bundled by
  ``check-jsonschema --builtin-schema vendor.github-workflows`` (no network needed).
* What a schema cannot see:
  - every ``pytest`` command line uses only options this project's ``pytest --help`` lists
    (the plugin's, pytest-benchmark's, pytest's); an option
    taking several values (``--benchmark-compare-fail=EXPR [EXPR ...]``) is given with
    ``=``, so that it never swallows a path after it; the paths it selects exist;
  - the KubeRay version the e2e job installs is the one k8s/README.md pins, and every
    ``helm install`` and every action is pinned;
  - each workflow does what it is for (the gates, the artifacts, the logs on failure).
* Deliberately broken copies are rejected by each of these checks.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from test_k8s_manifests import pinned_kuberay_version

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.y*ml"))
PERF_GATE = WORKFLOWS_DIR / "perf-gate.yml"
K8S_E2E = WORKFLOWS_DIR / "k8s-e2e.yml"
SCHEMA = "vendor.github-workflows"
#: options of the Ray Jobs transport, being added to the plugin at the same time as the workflows
#: what a GitHub expression ``${{ ... }}`` becomes before a command line is split
EXPRESSION = "GITHUB_EXPRESSION"
#: options naming where a run is saved or compared: the only ones the perf gate's steps may differ in
STORAGE_OPTIONS = ("--benchmark-storage", "--benchmark-json", "--benchmark-compare",
                   "--benchmark-compare-fail", "--benchmark-autosave", "--benchmark-save")


def load_workflow(path: Path) -> dict:
    """A workflow as YAML 1.1 reads it (so the key ``on`` arrives as True: put it back)."""
    doc = yaml.safe_load(path.read_text())
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def steps(workflow: dict) -> Iterator[dict]:
    for job in workflow.get("jobs", {}).values():
        yield from job.get("steps", [])


# ----------------------------------------------------------------------------- the schema

def schema_errors(path: Path) -> str:
    """check-jsonschema's complaint about ``path`` ("" when it validates)."""
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", SCHEMA, str(path)],
        capture_output=True, text=True, timeout=120)
    assert "No module named" not in out.stderr, (
        f"check-jsonschema is missing: pip install -e '.[test]' ({out.stderr.strip()})")
    return "" if out.returncode == 0 else out.stdout + out.stderr


def test_the_workflows_are_there():
    assert PERF_GATE in WORKFLOWS and K8S_E2E in WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_githubs_schema(path):
    assert schema_errors(path) == ""


def test_schema_rejects_a_broken_workflow(tmp_path):
    broken = load_workflow(PERF_GATE)
    job = broken["jobs"]["perf"]
    job["step"] = job.pop("steps")  # a typo
    path = tmp_path / "typo.yml"
    path.write_text(yaml.safe_dump(broken))
    assert "'step' was unexpected" in schema_errors(path)

    broken = load_workflow(K8S_E2E)
    del broken["jobs"]["kind"]["runs-on"]
    path = tmp_path / "no-runner.yml"
    path.write_text(yaml.safe_dump(broken))
    assert "runs-on" in schema_errors(path)


# ----------------------------------------------------------------------------- pytest options

def _help_options(text: str) -> tuple[set[str], set[str]]:
    """Option names in ``pytest --help``, and those taking several values (``[X ...]``)."""
    names: set[str] = set()
    multi: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^  (-[\w-].*?)(?:\s{2,}|$)", line)
        if not m:
            continue
        for form in m[1].split(", "):
            name = re.match(r"-{1,2}[\w-]+", form)
            if name:
                names.add(name[0])
                if "...]" in form:
                    multi.add(name[0])
    return names, multi


@pytest.fixture(scope="module")
def pytest_options() -> tuple[set[str], set[str]]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    names, multi = _help_options(out.stdout)
    assert {"--ray-address", "--benchmark-compare", "-p"} <= names  # the plugins are loaded
    return names, multi


def _drop_heredocs(script: str) -> str:
    """The script without the bodies of its here-documents (``<<'EOF'`` ... ``EOF``)."""
    kept, end = [], None
    for line in script.splitlines():
        if end is not None:
            end = None if line.strip() == end else end
            continue
        kept.append(line)
        m = re.search(r"<<-?\s*(['\"]?)(\w+)\1", line)
        end = m[2] if m else None
    return "\n".join(kept)


def shell_commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a ``run:`` script, split as the shell would (roughly)."""
    script = re.sub(r"\$\{\{.*?\}\}", EXPRESSION, _drop_heredocs(script).replace("\\\n", " "))
    script = script.replace("\n", "\n\n")  # a comment eats the newline that ends it: keep one
    separators = ";&|<>()\n"
    lexer = shlex.shlex(script, posix=True, punctuation_chars=separators)
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = "#"
    command: list[str] = []
    for token in lexer:
        if set(token) <= set(separators):
            if command:
                yield command
            command = []
        else:
            command.append(token)
    if command:
        yield command


def pytest_command_lines(workflow: dict) -> list[list[str]]:
    """The arguments of every ``pytest`` / ``python -m pytest`` in the workflow's steps."""
    found = []
    for step in steps(workflow):
        for cmd in shell_commands(step.get("run", "")):
            if cmd[0] == "pytest":
                found.append(cmd[1:])
            elif re.fullmatch(r"python3?(\.\d+)?", cmd[0]) and cmd[1:3] == ["-m", "pytest"]:
                found.append(cmd[3:])
    return found


def option_problems(args: list[str], names: set[str], multi: set[str]) -> list[str]:
    """What is wrong with one pytest command line's options and paths."""
    problems = []
    for arg in args:
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            if name not in names:
                problems.append(f"unknown option {name}")
            elif name in multi and "=" not in arg:
                problems.append(f"{name} takes several values: write {name}=VALUE")
        elif arg.startswith("-") and len(arg) > 1:
            if arg[:2] not in names:
                problems.append(f"unknown option {arg[:2]}")
        elif re.match(r"(perf|tests)(/|$)", arg) and not (ROOT / arg.split("::")[0]).exists():
            problems.append(f"no such path {arg}")
    return problems


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_pytest_command_lines_use_existing_options(path, pytest_options):
    lines = pytest_command_lines(load_workflow(path))
    assert lines, f"{path.name} runs no pytest"
    for args in lines:
        assert option_problems(args, *pytest_options) == [], shlex.join(args)


def test_option_check_rejects_a_broken_command_line(pytest_options):
    broken = load_workflow(PERF_GATE)
    step = next(s for s in steps(broken) if "--benchmark-compare" in s.get("run", ""))
    step["run"] = step["run"].replace("--workers", "--worker").replace(
        "--benchmark-compare-fail=", "--benchmark-compare-fail ").replace(
        "perf/test_scaling.py", "perf/test_scalling.py")
    problems = [p for args in pytest_command_lines(broken)
                for p in option_problems(args, *pytest_options)]
    assert sorted(problems) == [
        "--benchmark-compare-fail takes several values: write --benchmark-compare-fail=VALUE",
        "no such path perf/test_scalling.py", "unknown option --worker"]


def test_shell_splitting():
    script = ('echo "x"; pytest a --b="c d" ${{ github.sha }} | tee log && \\\n'
              '  python -m pytest -q  # a comment\nprintf "pytest --no\n  more"\n'
              "cat <<'EOF'\npytest --in-a-heredoc\nEOF\npytest\n")
    assert pytest_command_lines({"jobs": {"j": {"steps": [{"run": script}]}}}) == [
        ["a", "--b=c d", EXPRESSION], ["-q"], []]


# ----------------------------------------------------------------------------- pins

def kuberay_problems(workflow: dict) -> list[str]:
    """Where the workflow's KubeRay operator differs from the one k8s/README.md pins."""
    pinned = pinned_kuberay_version()
    problems = []
    if str(workflow.get("env", {}).get("KUBERAY_VERSION")) != pinned:
        problems.append(f"env KUBERAY_VERSION is not {pinned}")
    installs = [cmd for s in steps(workflow) for cmd in shell_commands(s.get("run", ""))
                if cmd[:2] == ["helm", "install"]]
    if not installs:
        problems.append("no helm install")
    for cmd in installs:
        version = cmd[cmd.index("--version") + 1] if "--version" in cmd[:-1] else None
        if version != "$KUBERAY_VERSION":
            problems.append(f"helm install without --version $KUBERAY_VERSION: {shlex.join(cmd)}")
    return problems


def test_e2e_installs_the_pinned_kuberay():
    assert kuberay_problems(load_workflow(K8S_E2E)) == []


def test_kuberay_check_rejects_another_version():
    broken = load_workflow(K8S_E2E)
    broken["env"]["KUBERAY_VERSION"] = "1.5.0"
    assert kuberay_problems(broken) == [f"env KUBERAY_VERSION is not {pinned_kuberay_version()}"]
    broken = load_workflow(K8S_E2E)
    step = next(s for s in steps(broken) if "helm install" in s.get("run", ""))
    step["run"] = step["run"].replace('--version "$KUBERAY_VERSION"', "")
    assert len(kuberay_problems(broken)) == 1


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned(path):
    for step in steps(load_workflow(path)):
        if "uses" in step:
            assert re.search(r"@v\d+(\.\d+)*$", step["uses"]), step["uses"]


# ----------------------------------------------------------------------------- what they do

def _step(workflow: dict, text: str) -> dict:
    [found] = [s for s in steps(workflow) if text in s.get("run", "") or text in s.get("uses", "")]
    return found


def _selection(args: list[str]) -> list[str]:
    return [a for a in args if a.split("=", 1)[0] not in STORAGE_OPTIONS]


def check_perf_gate(wf: dict) -> None:
    """The perf gate: the selection with its gates, the base run, the artifacts."""
    assert "pull_request" in wf["on"] and wf["on"]["push"]["branches"] == ["main"]
    assert "ADULT_DATA_DIR" in wf["env"]  # downloaded from UCI when missing; cached
    lines = pytest_command_lines(wf)
    assert len(lines) == 3  # with the base run, without one, and the run saved on main
    assert all(_selection(a) == _selection(lines[0]) for a in lines)  # the same selection
    for gate in ("--min-efficiency", "--max-overhead-share", "--report-dir"):
        assert gate in lines[0]
    compare = next(a for a in lines if "--benchmark-compare" in a)
    assert any(a.startswith("--benchmark-compare-fail=min:") for a in compare)
    judged = _step(wf, "kernelshap-compare")  # the noise-aware judgement of the same run
    assert "--benchmark-compare" in judged["run"] and "perf-run.json" in judged["run"].split("kernelshap-compare")[1]
    restore = _step(wf, "actions/cache/restore")
    assert "github.event.pull_request.base.sha" in restore["with"]["key"]
    save = _step(wf, "actions/cache/save")
    assert "github.sha" in save["with"]["key"] and "refs/heads/main" in save["if"]
    assert restore["with"]["path"] == save["with"]["path"]
    upload = _step(wf, "actions/upload-artifact")
    assert upload["if"] == "always()"
    assert {"perf-run.json", "report/"} <= set(upload["with"]["path"].split())


def check_e2e(wf: dict) -> None:
    """The e2e job: kind, the image, the Secret, the manifests, the suite, the logs."""
    assert _step(wf, "helm/kind-action")["with"]["version"] == "${{ env.KIND_VERSION }}"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", wf["env"]["KIND_VERSION"])
    assert (ROOT / wf["env"]["OVERLAY"] / "kustomization.yaml").is_file()
    for text in ("docker build -f k8s/Dockerfile", "kind load docker-image",
                 "kubectl create secret generic", "kubectl apply -k",
                 "--for=condition=RayClusterProvisioned",
                 '["authOptions"]["secretName"]'):  # the Secret is the one the manifests name
        _step(wf, text)
    e2e, perf = pytest_command_lines(wf)
    assert e2e[0] == "tests/test_k8s_e2e.py"  # collected here: the legacy transport
    assert e2e[e2e.index("--k8s-transport") + 1] == "client"
    assert perf[0].startswith("perf/") and "--k8s-transport" not in perf  # Ray Jobs, the default
    for args in (e2e, perf):
        assert args[args.index("--ray-address") + 1] == "k8s"
    logs = _step(wf, "kubectl logs deployment/kuberay-operator")
    assert logs["if"] == "failure()"
    upload = next(s for s in steps(wf) if s.get("with", {}).get("path") == ".benchmarks/")
    assert upload["if"] == "always()"


def test_perf_gate_gates_and_uploads():
    check_perf_gate(load_workflow(PERF_GATE))


def test_e2e_runs_the_suite_on_kind_with_logs():
    check_e2e(load_workflow(K8S_E2E))


def test_content_checks_can_fail():
    broken = load_workflow(PERF_GATE)
    _step(broken, "actions/upload-artifact")["if"] = "success()"
    with pytest.raises(AssertionError):
        check_perf_gate(broken)
    broken = load_workflow(K8S_E2E)
    _step(broken, "kubectl logs deployment/kuberay-operator")["if"] = "always()"
    with pytest.raises(AssertionError):
        check_e2e(broken)
