"""Hardening of k8s/ and the cluster image (issue 20, item 8).

Checked on the *rendered* kustomizations (the same Python renderer as
tests/test_k8s_manifests.py, compared there with ``kubectl kustomize``):

* every pod template (head and each worker group, every container and init container):
  non-root uid/gid matching the image's ``USER``, no privilege escalation, all capabilities
  dropped, seccomp ``RuntimeDefault``; no service-account token mounted (autoscaling is
  off, so nothing in the pods talks to the Kubernetes API);
* a NetworkPolicy (valid, strict) that selects this cluster's pods, admits only the cluster's
  own pods and lists the head's ports 6379/8265/10001/8000, default-deny otherwise;
* the image is pinned by a version tag (project version + Ray + Python, never ``latest``)
  with a pull policy that fits it;
* the Dockerfile installs with ``-c constraints.txt``, the build context lets that file in,
  and the file pins every runtime dependency of pyproject with ``==`` (and is what
  ``k8s/constraints.py`` generates from the tested environment);
* the version check rejects a NumPy (major.minor) or scikit-learn mismatch between the
  client and the cluster, since the model is cloudpickled across.

No Ray is started here (``cluster_versions`` runs against a stand-in ``ray`` module).
"""
from __future__ import annotations

import fnmatch
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
import types

import pytest

pytest.importorskip("jsonschema")
pytest.importorskip("kubernetes_validate")
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

from explainers.cluster import kuberay as k8s  # noqa: E402
from explainers.cluster.kuberay import connection as k8s_connection  # noqa: E402
from test_k8s_manifests import (  # noqa: E402
    K8S, KUSTOMIZATIONS, ROOT, rayclusters, render, templates, validate_builtin)

HEAD_PORTS = {6379, 8265, 10001, 8000}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT_VERSION = PYPROJECT["project"]["version"]
DOCKERFILE = (K8S / "Dockerfile").read_text()
CONSTRAINTS = K8S / "constraints.txt"


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def docs(request) -> list[dict]:
    return render(request.param)


def _image_user() -> tuple[int, int]:
    """The numeric ``USER uid:gid`` the final stage of k8s/Dockerfile runs as."""
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)
    assert users, "k8s/Dockerfile sets no USER"
    m = re.fullmatch(r"(\d+):(\d+)", users[-1])
    assert m, f"the image's USER must be numeric uid:gid (runAsNonRoot checks it): {users[-1]}"
    return int(m[1]), int(m[2])


def _all_containers(template: dict):
    spec = template["spec"]
    yield from spec["containers"]
    yield from spec.get("initContainers", [])
    yield from spec.get("ephemeralContainers", [])


# ----------------------------------------------------------------------------- pod security

def test_every_pod_and_container_is_locked_down(docs):
    uid, gid = _image_user()
    assert uid != 0 and gid != 0
    rcs = rayclusters(docs)
    assert rcs
    for rc in rcs:
        for group, t in templates(rc):
            pod = t["spec"].get("securityContext") or {}
            where = f"{rc['metadata']['name']}/{group}"
            assert pod.get("runAsNonRoot") is True, where
            assert (pod.get("runAsUser"), pod.get("runAsGroup"), pod.get("fsGroup")) == (
                uid, gid, gid), f"{where}: uid/gid/fsGroup must match the image's USER"
            assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            assert t["spec"].get("hostNetwork") is not True and \
                t["spec"].get("hostPID") is not True and t["spec"].get("hostIPC") is not True
            for c in _all_containers(t):
                sc = c.get("securityContext") or {}
                cw = f"{where}/{c['name']}"
                assert sc.get("allowPrivilegeEscalation") is False, cw
                assert sc.get("privileged") is not True, cw
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], cw
                assert not sc.get("capabilities", {}).get("add"), cw
                assert sc.get("runAsNonRoot", True) is True, cw
                assert sc.get("runAsUser", uid) == uid and sc.get("runAsUser", uid) != 0, cw
                assert sc.get("seccompProfile", pod["seccompProfile"]) == {
                    "type": "RuntimeDefault"}, cw


def test_no_service_account_token_and_no_autoscaler(docs):
    for rc in rayclusters(docs):
        # The in-tree autoscaler sidecar would need API access (and so the token); it is
        # off, and nothing else in the pods talks to the Kubernetes API.
        assert rc["spec"].get("enableInTreeAutoscaling") is not True
        assert "autoscalerOptions" not in rc["spec"]
        for group, t in templates(rc):
            assert t["spec"].get("automountServiceAccountToken") is False, group


def test_security_checks_can_fail():
    rc = rayclusters(render(K8S))[0]
    rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["securityContext"][
        "allowPrivilegeEscalation"] = True
    with pytest.raises(AssertionError, match="ray-head"):
        test_every_pod_and_container_is_locked_down([rc])


# ----------------------------------------------------------------------------- image pinning

def test_images_are_pinned_by_version(docs):
    tag_re = re.compile(rf"{re.escape(PROJECT_VERSION)}-ray\d+\.\d+\.\d+-py3\d+")
    for rc in rayclusters(docs):
        for group, t in templates(rc):
            for c in _all_containers(t):
                image = c["image"]
                name, at, digest = image.partition("@")
                if at:  # pinned by digest: any pull policy is safe
                    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), image
                    continue
                repo, _, tag = name.rpartition(":")
                assert repo and "/" not in tag, f"{group}: image without a tag: {image}"
                assert tag != "latest" and tag_re.fullmatch(tag), (
                    f"{group}: {image} is not pinned to the project version "
                    f"{PROJECT_VERSION} (tag {PROJECT_VERSION}-rayX.Y.Z-pyXY)")
                assert c.get("imagePullPolicy") == "IfNotPresent", (group, image)
    for directory in KUSTOMIZATIONS:  # kustomize `images:` overrides, if any
        text = (directory / "kustomization.yaml").read_text()
        assert not re.search(r"newTag:\s*['\"]?latest", text), directory


def test_dockerfile_tag_comment_matches_manifest():
    rc = rayclusters(render(K8S))[0]
    image = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert f"-t {image} " in DOCKERFILE, "the build command in k8s/Dockerfile names another tag"


# ----------------------------------------------------------------------------- network policy

def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # all we use
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_network_policy_admits_only_the_cluster(docs):
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policies, "no NetworkPolicy in the kustomization"
    for p in policies:
        validate_builtin(p)
    for rc in rayclusters(docs):
        name = rc["metadata"]["name"]
        own = {"ray.io/cluster": name}
        head = {**own, "ray.io/node-type": "head"}
        worker = {**own, "ray.io/node-type": "worker"}
        mine = [p for p in policies if _selects(p["spec"]["podSelector"], head)
                and _selects(p["spec"]["podSelector"], worker)]
        assert mine, f"no NetworkPolicy selects every pod of RayCluster {name}"
        for p in policies:
            spec = p["spec"]
            assert spec["podSelector"].get("matchLabels", {}).get("ray.io/cluster") == name
            assert "Ingress" in spec["policyTypes"]
            for rule in spec.get("ingress", []):
                # default deny: every rule names its peers; none admits everyone
                assert rule.get("from"), f"{p['metadata']['name']}: a rule without `from`"
                for peer in rule["from"]:
                    assert "ipBlock" not in peer or peer["ipBlock"]["cidr"] not in (
                        "0.0.0.0/0", "::/0"), peer
                    assert peer.get("namespaceSelector") is None, peer  # same namespace
                    assert peer.get("podSelector", {}).get("matchLabels"), peer
        # the cluster's pods reach each other on every port (Ray's ports are dynamic)
        assert any(not rule.get("ports") and any(
            _selects(peer["podSelector"], own) and peer["podSelector"]["matchLabels"] == own
            for peer in rule["from"]) for p in mine for rule in p["spec"].get("ingress", []))
        # the head's ports are listed (the port-forward path and in-cluster clients)
        head_ports = {port["port"] for p in policies if _selects(p["spec"]["podSelector"], head)
                      for rule in p["spec"].get("ingress", []) for port in rule.get("ports", [])}
        assert HEAD_PORTS <= head_ports, sorted(head_ports)
        declared = {cp["containerPort"] for c in
                    rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
                    for cp in c.get("ports", [])}
        assert HEAD_PORTS <= declared


def test_network_policy_documents_port_forward():
    text = (K8S / "base" / "networkpolicy.yaml").read_text()
    assert "port-forward" in text and "kubelet" in text
    readme = (K8S / "README.md").read_text()
    assert "NetworkPolicy" in readme and "port-forward" in readme


# ----------------------------------------------------------------------------- constraints

def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=<>!~,]+)", line)
        assert m, f"not an exact pin: {line!r}"
        pins[canonicalize_name(m[1])] = m[2]
    return pins


def test_dockerfile_installs_with_the_constraints_file():
    assert re.search(r"^COPY\b.*\bk8s/constraints\.txt\b", DOCKERFILE, re.M), DOCKERFILE
    installs = re.findall(r"pip install[^\n]*(?:\\\n[^\n]*)*", DOCKERFILE)
    assert installs and all(re.search(r"(-c|--constraint)[ =]\S*constraints\.txt", i)
                            for i in installs), installs
    # BuildKit's <Dockerfile>.dockerignore: the last matching pattern wins
    ignore = [ln.strip() for ln in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for pat in ignore:
            neg = pat.startswith("!")
            pat = pat.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
                keep = neg
        return keep

    assert included("k8s/constraints.txt")
    assert not included("k8s/secret-token.example.yaml") and not included(".git/config")


def test_constraints_pin_every_runtime_dependency():
    pins = _constraints()
    text = CONSTRAINTS.read_text()
    assert "python k8s/constraints.py > k8s/constraints.txt" in text  # how to regenerate
    assert canonicalize_name(PYPROJECT["project"]["name"]) not in pins
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in k8s/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (dep, pins[name])
    # test-only packages stay out (unless the runtime closure needs them)
    assert "shap" not in pins and "kubernetes-validate" not in pins
    ray_version = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE, re.M))["RAY_VERSION"]
    assert pins["ray"] == ray_version


def test_constraints_generator_covers_the_committed_pins():
    """k8s/constraints.py runs here and pins the same packages as k8s/constraints.txt.

    Versions are not compared: a fresh install (CI's) resolves the newest releases, and the
    file records the versions the image was tested with, regenerated on purpose.
    """
    out = subprocess.run([sys.executable, str(K8S / "constraints.py")], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    generated = {line.split("==")[0].lower() for line in out.stdout.splitlines()
                 if line and not line.startswith("#")}
    assert all("==" in line for line in out.stdout.splitlines() if line and not line.startswith("#"))
    committed = {name.lower() for name in _constraints()}
    direct = {"numpy", "scipy", "scikit-learn", "pandas", "ray", "pytest", "pytest-benchmark"}
    assert direct <= generated and direct <= committed


# ----------------------------------------------------------------------------- version check

def _local(pkg: str) -> str:
    return md.version(pkg)


def _ray_version() -> str:
    return md.version("ray")


PY = tuple(sys.version_info[:2])


def test_compare_versions_rejects_numpy_minor_mismatch():
    with pytest.raises(k8s.K8sError, match=r"NumPy 1\.26\.4 on the cluster, 2\.4\.6 here"):
        k8s.compare_versions(_ray_version(), PY, local_ray=_ray_version(),
                             cluster_numpy="1.26.4", local_numpy="2.4.6")
    with pytest.raises(k8s.K8sError, match=r"NumPy 2\.3\.0 on the cluster, 2\.4\.6 here"):
        k8s.compare_versions(_ray_version(), PY, local_ray=_ray_version(),
                             cluster_numpy="2.3.0", local_numpy="2.4.6")
    # a patch-level difference is fine
    k8s.compare_versions(_ray_version(), PY, local_ray=_ray_version(),
                         cluster_numpy="2.4.1", local_numpy="2.4.6")


def test_compare_versions_rejects_sklearn_mismatch():
    with pytest.raises(k8s.K8sError, match=r"scikit-learn 1\.9\.0 on the cluster, 1\.9\.1 here"):
        k8s.compare_versions(_ray_version(), PY, local_ray=_ray_version(),
                             cluster_sklearn="1.9.0", local_sklearn="1.9.1")
    with pytest.raises(k8s.K8sError, match=r"scikit-learn not installed on the cluster, "
                                           r"1\.9\.1 here"):
        k8s.compare_versions(_ray_version(), PY, local_ray=_ray_version(),
                             cluster_sklearn=None, local_sklearn="1.9.1",
                             check_model_libs=True)
    k8s.compare_versions(_ray_version(), PY, local_ray=_ray_version(),
                         cluster_sklearn="1.9.1", local_sklearn="1.9.1")


def test_compare_versions_defaults_to_local_libs_and_stays_compatible():
    # old call shapes (as in _rephrase_init_error and tests/test_k8s_attach.py)
    k8s.compare_versions(_ray_version(), PY)
    k8s.compare_versions(_ray_version(), "{}.{}.3".format(*PY), local_ray=_ray_version(),
                         local_python=PY)
    with pytest.raises(k8s.K8sError, match=r"Ray 2\.0\.0 on the cluster"):
        k8s.compare_versions("2.0.0", PY)
    # local NumPy / scikit-learn default to this process's
    k8s.compare_versions(_ray_version(), PY, cluster_numpy=_local("numpy"),
                         cluster_sklearn=_local("scikit-learn"))
    with pytest.raises(k8s.K8sError) as info:
        k8s.compare_versions(_ray_version(), PY, cluster_numpy="1.0.0",
                             cluster_sklearn="0.1.0")
    msg = str(info.value)
    assert f"NumPy 1.0.0 on the cluster, {_local('numpy')} here" in msg
    assert f"scikit-learn 0.1.0 on the cluster, {_local('scikit-learn')} here" in msg
    assert "k8s/constraints.txt" in msg  # says how to fix the image


class _FakeRay(types.ModuleType):
    """Just enough of ``ray`` for cluster_versions: runs the task in this process."""

    def __init__(self):
        super().__init__("ray")
        self.__version__ = _ray_version()

    def remote(self, **_):
        def wrap(fn):
            return types.SimpleNamespace(remote=lambda *a, **kw: fn(*a, **kw))
        return wrap

    @staticmethod
    def get(value, timeout=None):
        return value

    @staticmethod
    def get_runtime_context():
        return types.SimpleNamespace(get_node_id=lambda: "node-1")


def test_cluster_versions_reports_numpy_and_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", _FakeRay())
    v = k8s.cluster_versions(timeout=5)
    assert v["ray"] == _ray_version() and tuple(v["python"]) == PY
    assert v["numpy"] == _local("numpy")
    assert v["sklearn"] == _local("scikit-learn")
    assert v["node_id"] == "node-1"


def _conn_stub():
    return types.SimpleNamespace(namespace="default", cluster="kernelshap", timeout=5,
                                 versions=None, ensure_alive=lambda: None)


def test_check_versions_rejects_model_library_mismatch(monkeypatch):
    good = {"ray": _ray_version(), "python": PY, "explainers": "0.1.0",
            "numpy": _local("numpy"), "sklearn": _local("scikit-learn"), "node_id": "n"}
    monkeypatch.setattr(k8s_connection, "cluster_versions", lambda timeout=60.0: dict(good))
    conn = _conn_stub()
    assert k8s.K8sConnection.check_versions(conn)["numpy"] == _local("numpy")
    monkeypatch.setattr(k8s_connection, "cluster_versions",
                        lambda timeout=60.0: {**good, "numpy": "1.26.4"})
    with pytest.raises(k8s.K8sError, match=rf"NumPy 1\.26\.4 on the cluster, "
                                           rf"{re.escape(_local('numpy'))} here"):
        k8s.K8sConnection.check_versions(conn)
    monkeypatch.setattr(k8s_connection, "cluster_versions",
                        lambda timeout=60.0: {**good, "sklearn": "1.5.0"})
    with pytest.raises(k8s.K8sError, match=r"scikit-learn 1\.5\.0 on the cluster"):
        k8s.K8sConnection.check_versions(conn)
    # an explicit expectation, like expected_ray / expected_python
    monkeypatch.setattr(k8s_connection, "cluster_versions", lambda timeout=60.0: dict(good))
    with pytest.raises(k8s.K8sError, match=r"scikit-learn .* on the cluster, 0\.9\.9 here"):
        k8s.K8sConnection.check_versions(conn, expected_sklearn="0.9.9")
    # opt-out for a cluster that never receives a model
    monkeypatch.setattr(k8s_connection, "cluster_versions",
                        lambda timeout=60.0: {**good, "sklearn": "1.5.0"})
    k8s.K8sConnection.check_versions(conn, check_model_libs=False)
