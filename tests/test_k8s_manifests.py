"""Offline validation of the KubeRay manifests in k8s/.

* Each kustomization is rendered in Python (resources + JSON-6902 patches: all that k8s/
  uses; an unsupported kustomize feature fails the test) and, when ``kubectl`` is on PATH,
  compared with ``kubectl kustomize``.
* RayCluster objects are validated against the ``openAPIV3Schema`` of KubeRay's CRD
  (``$KUBERAY_CRD`` or ``../shared/k8s/ray.io_rayclusters.yaml``; skipped when absent),
  plus a walk that rejects fields the schema does not know (the CRD itself allows them).
* Pod templates and built-in kinds are validated with ``kubernetes-validate`` (strict).
* Then the suite's own requirements: versions, resources, /dev/shm, KubeRay's own token
  mode (``spec.authOptions`` naming the token Secret), the dashboard port the Jobs
  transport forwards, the KubeRay version k8s/README.md pins, the kind-ci overlay's size
  (the hardening -- securityContext, NetworkPolicy, pinned image and dependencies -- is
  checked in tests/test_faults_k8s_hardening.py).
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from explainers.cluster import kuberay as k8s  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
KUSTOMIZATIONS = [K8S, K8S / "base", K8S / "overlays" / "two-nodes",
                  K8S / "overlays" / "kind-ci"]
K8S_VERSION = "1.33"  # Kubernetes schema version used by kubernetes-validate
SECRET_NAME, SECRET_KEY = "kernelshap-ray-token", "auth_token"
DASHBOARD_PORT = 8265  # the Ray Jobs API, port-forwarded by --ray-address k8s
#: the first KubeRay release whose RayCluster has ``spec.authOptions.secretName``
KUBERAY_MIN_FOR_SECRET_NAME = (1, 6, 0)
#: CPUs a 4-vCPU CI runner leaves to the RayCluster after kind's system pods and the operator
KIND_CI_CPUS = 3.0

try:
    import ray
    RAY_VERSION = ray.__version__
except ImportError:  # pragma: no cover
    RAY_VERSION = None
PY_TAG = "py{}{}".format(*sys.version_info[:2])
PROJECT_VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(),
                            re.M)[1]


# ----------------------------------------------------------------------------- rendering

def _load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pointer_set(obj: Any, pointer: str, value: Any, op: str) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~")
                      for p in pointer.lstrip("/").split("/")]
    node = obj
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        idx = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(idx, value)
        else:
            node[idx]  # must exist  # noqa: B018
            node[idx] = value
    else:
        if op == "replace" and last not in node:
            raise KeyError(f"replace of missing {pointer}")
        node[last] = value


def _matches(doc: dict, target: dict) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    checks = {"kind": doc["kind"], "name": doc["metadata"]["name"], "group": group,
              "version": version}
    return all(checks.get(k) == v for k, v in target.items() if k in checks)


def render(directory: Path) -> list[dict]:
    """Render a kustomization (the subset k8s/ uses) without kustomize."""
    kfile = directory / "kustomization.yaml"
    kust = yaml.safe_load(kfile.read_text())
    unknown = set(kust) - {"apiVersion", "kind", "resources", "patches"}
    assert not unknown, f"{kfile}: the Python renderer does not support {sorted(unknown)}"
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = (directory / res).resolve()
        docs += render(path) if path.is_dir() else _load_docs(path)
    for patch in kust.get("patches", []):
        ops = yaml.safe_load(patch["patch"] if "patch" in patch
                             else (directory / patch["path"]).read_text())
        assert isinstance(ops, list), f"{kfile}: only JSON-6902 patches are supported"
        hits = [d for d in docs if _matches(d, patch["target"])]
        assert hits, f"{kfile}: patch target {patch['target']} matches nothing"
        for doc in hits:
            for op in ops:
                assert op["op"] in ("add", "replace"), op
                _pointer_set(doc, op["path"], op["value"], op["op"])
    return docs


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def rendered(request) -> list[dict]:
    return render(request.param)


def rayclusters(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "RayCluster"]


def templates(rc: dict) -> Iterator[tuple[str, dict]]:
    yield "head", rc["spec"]["headGroupSpec"]["template"]
    for g in rc["spec"]["workerGroupSpecs"]:
        yield g["groupName"], g["template"]


def containers(rc: dict) -> Iterator[tuple[str, dict]]:
    for name, t in templates(rc):
        for c in t["spec"]["containers"]:
            yield name, c


def _key(doc: dict) -> tuple[str, str, str]:
    return doc["apiVersion"], doc["kind"], doc["metadata"]["name"]


def test_kustomizations_render(rendered):
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == [
        ("NetworkPolicy", "kernelshap-ray"), ("NetworkPolicy", "kernelshap-ray-head"),
        ("RayCluster", "kernelshap")]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_rendering_equals_kubectl_kustomize(directory):
    out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0 and "unknown command" in out.stderr:
        pytest.skip("this kubectl has no kustomize")
    assert out.returncode == 0, out.stderr
    # kustomize orders resources by kind; the Python renderer keeps the file order
    assert sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=_key) == sorted(
        render(directory), key=_key)


def test_overlay_sets_two_workers():
    base = rayclusters(render(K8S))[0]
    two = rayclusters(render(K8S / "overlays" / "two-nodes"))[0]
    assert base["spec"]["workerGroupSpecs"][0]["replicas"] == 1
    assert two["spec"]["workerGroupSpecs"][0]["replicas"] == 2
    two["spec"]["workerGroupSpecs"][0]["replicas"] = 1
    assert two == base  # the overlay changes nothing else


# ----------------------------------------------------------------------------- CRD schema

def _crd_path() -> Path:
    env = os.environ.get("KUBERAY_CRD")
    return Path(env) if env else ROOT.parent / "shared" / "k8s" / "ray.io_rayclusters.yaml"


@pytest.fixture(scope="module")
def raycluster_schema() -> dict:
    path = _crd_path()
    if not path.is_file():
        pytest.skip(f"KubeRay CRD not found at {path} (set KUBERAY_CRD to "
                    "ray.io_rayclusters.yaml from KubeRay's ray-operator/config/crd/bases/)")
    crd = yaml.safe_load(path.read_text())
    assert crd["spec"]["names"]["kind"] == "RayCluster"
    [v1] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict, path: str = "") -> list[str]:
    """Paths of keys the structural schema does not declare."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if props is not None and key in props:
                found += unknown_fields(sub, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(sub, extra, f"{path}.{key}")
            elif props is not None or extra is False:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def check_raycluster(rc: dict, schema: dict) -> list[str]:
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(rc)]
    errors += [f"{p}: unknown field" for p in unknown_fields(rc, schema)]
    return errors


def test_rayclusters_match_kuberay_crd(rendered, raycluster_schema):
    for rc in rayclusters(rendered):
        assert check_raycluster(rc, raycluster_schema) == []


def test_crd_checks_can_fail(raycluster_schema):
    rc = rayclusters(render(K8S))[0]
    bad = copy.deepcopy(rc)
    bad["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in e for e in check_raycluster(bad, raycluster_schema))
    bad = copy.deepcopy(rc)
    bad["spec"]["workerGroupSpecs"][0]["replica"] = 2  # a typo the CRD itself would prune
    assert check_raycluster(bad, raycluster_schema) == [
        ".spec.workerGroupSpecs[0].replica: unknown field"]
    bad = copy.deepcopy(rc)
    bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}
    assert check_raycluster(bad, raycluster_schema) == [
        ".spec.headGroupSpec.template.spec.containers[0].resource: unknown field"]


# ----------------------------------------------------------------------------- k8s schemas

def validate_builtin(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def as_pod_template(name: str, template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
            "template": template}


def test_pod_templates_are_valid_kubernetes(rendered):
    for rc in rayclusters(rendered):
        for group, template in templates(rc):
            validate_builtin(as_pod_template(f"{rc['metadata']['name']}-{group}", template))
    for doc in rendered:
        if doc["kind"] != "RayCluster":
            validate_builtin(doc)


def test_network_policy_check_can_fail():
    [policy, *_] = [d for d in render(K8S) if d["kind"] == "NetworkPolicy"]
    bad = copy.deepcopy(policy)
    bad["spec"]["ingress"][0]["form"] = bad["spec"]["ingress"][0].pop("from")  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(bad)
    bad = copy.deepcopy(policy)
    bad["spec"]["policyTypes"] = "Ingress"  # not a list
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(bad)


def test_pod_template_check_can_fail():
    rc = rayclusters(render(K8S))[0]
    template = copy.deepcopy(rc["spec"]["headGroupSpec"]["template"])
    template["spec"]["containers"][0]["volumeMount"] = []  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(as_pod_template("bad", template))


def test_secret_example_is_valid_and_not_deployed():
    [secret] = _load_docs(K8S / "secret-token.example.yaml")
    validate_builtin(secret)
    assert secret["metadata"]["name"] == SECRET_NAME
    assert SECRET_KEY in secret["stringData"]
    for d in KUSTOMIZATIONS:  # never applied (so never a committed token in a cluster)
        assert all(doc["kind"] != "Secret" for doc in render(d))


# ----------------------------------------------------------------------------- the suite's needs

def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([KMG]i?)?", str(quantity))
    assert m, quantity
    return int(m[1]) * units.get(m[2] or "", 1)


@pytest.mark.skipif(RAY_VERSION is None, reason="ray not installed")
def test_images_match_installed_ray_and_python(rendered):
    tag = f"{RAY_VERSION}-{PY_TAG}"
    for rc in rayclusters(rendered):
        assert rc["spec"]["rayVersion"] == RAY_VERSION
        for group, c in containers(rc):
            assert c["image"].rsplit(":", 1)[1] == f"{PROJECT_VERSION}-ray{tag}", (
                group, c["image"])
    text = (K8S / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    [base] = re.findall(r"^FROM (\S+)", text, re.M)
    while "${" in base:
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
    assert base == f"rayproject/ray:{tag}"


def test_resources_and_cpu_layout(rendered):
    for rc in rayclusters(rendered):
        for group, c in containers(rc):
            res = c["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res[kind]), (group, kind)
            assert res["requests"] == res["limits"], f"{group}: Guaranteed QoS expected"
        head = rc["spec"]["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0"  # work goes to the workers
        [workers] = [g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == "workers"]
        limit = workers["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
        assert k8s.worker_group_cpus(rc, "workers") == float(limit)
        assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]


def test_dev_shm_is_memory_backed_and_fits_the_object_store(rendered):
    for rc in rayclusters(rendered):
        groups = [rc["spec"]["headGroupSpec"]] + rc["spec"]["workerGroupSpecs"]
        for g in groups:
            spec = g["template"]["spec"]
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            store = _bytes(g["rayStartParams"]["object-store-memory"])
            for c in spec["containers"]:
                [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
                vol = volumes[mount["name"]]["emptyDir"]
                assert vol["medium"] == "Memory"
                assert store <= _bytes(vol["sizeLimit"]) < _bytes(
                    c["resources"]["limits"]["memory"])


def test_head_service_ports(rendered):
    """KubeRay puts the head container's named ports on the head service."""
    for rc in rayclusters(rendered):
        head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert {"name": "dashboard", "containerPort": DASHBOARD_PORT} in head["ports"]
        assert {"name": "client", "containerPort": 10001} in head["ports"]


def test_network_policy_lets_in_the_dashboard(rendered):
    [head_policy] = [d for d in rendered if d["kind"] == "NetworkPolicy"
                     and d["spec"]["podSelector"]["matchLabels"].get("ray.io/node-type") == "head"]
    ports = {p["port"] for rule in head_policy["spec"]["ingress"] for p in rule.get("ports", [])}
    assert DASHBOARD_PORT in ports


def test_token_auth_by_kuberay_from_the_secret(rendered):
    for rc in rayclusters(rendered):
        assert rc["spec"]["authOptions"] == {"mode": "token", "secretName": SECRET_NAME}
        for group, c in containers(rc):
            # the operator adds these, and skips a name the template already sets
            names = {e["name"] for e in c.get("env", [])}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}, group
        auth = k8s.auth_requirement(rc)  # what the plugin will read
        assert (auth.required, auth.secret_name, auth.secret_key) == (
            True, SECRET_NAME, SECRET_KEY)


def pinned_kuberay_version() -> str:
    """The KubeRay operator version k8s/README.md installs (``helm install ... --version``)."""
    text = (K8S / "README.md").read_text()
    found = set(re.findall(r"helm install kuberay-operator kuberay/kuberay-operator"
                           r"[^\n]*?--version[ =](\d+\.\d+\.\d+)", text))
    assert len(found) == 1, f"k8s/README.md must pin one KubeRay version, found {sorted(found)}"
    return found.pop()


def test_pinned_kuberay_supports_the_manifests():
    version = tuple(int(p) for p in pinned_kuberay_version().split("."))
    assert version >= KUBERAY_MIN_FOR_SECRET_NAME


def test_kind_ci_overlay_fits_a_small_runner():
    base = rayclusters(render(K8S))[0]
    small = rayclusters(render(K8S / "overlays" / "kind-ci"))[0]
    def limit(group: dict) -> float:
        return sum(float(c["resources"]["limits"]["cpu"])
                   for c in group["template"]["spec"]["containers"])

    spec = small["spec"]
    cpus = limit(spec["headGroupSpec"]) + sum(g["replicas"] * limit(g)
                                              for g in spec["workerGroupSpecs"])
    assert cpus <= KIND_CI_CPUS
    assert k8s.worker_group_cpus(small, "workers") >= 1
    for key in ("authOptions", "rayVersion", "enableInTreeAutoscaling"):
        assert small["spec"][key] == base["spec"][key]
