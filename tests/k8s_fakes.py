"""A loopback Kubernetes API server for the KubeRay tests (``FakeKubeAPI``), and the RayCluster
it serves: the project's own ``k8s/base/raycluster.yaml``.

It answers the paths the project's Kubernetes code uses: namespaces, RayClusters (get, list,
JSON patch), services, secrets and the pods of the RayCluster (one Running and Ready pod for the
head and for each worker replica the RayCluster asks for, unless ``pods_ready`` is False).
"""
from __future__ import annotations

import base64
import copy
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RAYCLUSTER_YAML = ROOT / "k8s" / "base" / "raycluster.yaml"
NS, CLUSTER = "default", "kernelshap"
TOKEN = "test-token-" + "a1b2c3d4" * 4


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class FakeKubeAPI:
    """A loopback Kubernetes API server answering the paths connect_k8s uses."""

    def __init__(self) -> None:
        rc = yaml.safe_load(RAYCLUSTER_YAML.read_text())
        rc["metadata"].update(namespace=NS, uid="0000-1111", resourceVersion="1",
                              creationTimestamp="2026-01-01T00:00:00Z")
        rc["status"] = {"state": "ready", "desiredWorkerReplicas": 1}
        self.namespaces = {NS}
        self.forbidden = False  # answer 403 to everything (credentials without rights)
        self.crd_installed = True
        self.pods_ready = True  # the pods of scaled worker groups become Ready at once
        self.rayclusters = {(NS, CLUSTER): rc}
        self.services = {(NS, f"{CLUSTER}-head-svc"): {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"{CLUSTER}-head-svc", "namespace": NS},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.17", "ports": [
                {"name": "gcs-server", "port": 6379, "protocol": "TCP", "targetPort": 6379},
                {"name": "dashboard", "port": 8265, "protocol": "TCP", "targetPort": 8265},
                {"name": "client", "port": 10001, "protocol": "TCP", "targetPort": 10001},
            ]}}}
        self.secrets = {(NS, "kernelshap-ray-token"): {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "kernelshap-ray-token", "namespace": NS},
            "data": {"auth_token": base64.b64encode(TOKEN.encode()).decode()}}}
        self.requests: list[tuple[str, str, dict, object]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                api.requests.append(("GET", self.path, dict(self.headers), None))
                self._send(*api.get(self.path.split("?")[0]))

            def do_PATCH(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"null")
                api.requests.append(("PATCH", self.path, dict(self.headers), body))
                self._send(*api.patch(self.path.split("?")[0],
                                      self.headers.get("Content-Type"), body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path: str) -> tuple[int, dict]:
        if self.forbidden:
            return 403, _status(403, "Forbidden", f'User "fake" cannot get {path}')
        if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)", path):
            if m[1] in self.namespaces:
                return 200, {"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": m[1]}, "status": {"phase": "Active"}}
            return 404, _status(404, "NotFound", f'namespaces "{m[1]}" not found')
        if m := re.fullmatch(r"/apis/ray\.io/v1/namespaces/([^/]+)/rayclusters(?:/([^/]+))?",
                             path):
            if not self.crd_installed:
                return 404, _status(404, "NotFound", "the server could not find the "
                                    "requested resource")
            if m[2] is None:
                items = [v for (ns, _), v in self.rayclusters.items() if ns == m[1]]
                return 200, {"apiVersion": "ray.io/v1", "kind": "RayClusterList",
                             "metadata": {}, "items": items}
            if (m[1], m[2]) in self.rayclusters:
                return 200, self.rayclusters[(m[1], m[2])]
            return 404, _status(404, "NotFound",
                                f'rayclusters.ray.io "{m[2]}" not found')
        if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", path):
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {},
                         "items": self.pods(m[1])}
        for kind, store in (("services", self.services), ("secrets", self.secrets)):
            if m := re.fullmatch(rf"/api/v1/namespaces/([^/]+)/{kind}/([^/]+)", path):
                if (m[1], m[2]) in store:
                    return 200, store[(m[1], m[2])]
                return 404, _status(404, "NotFound", f'{kind} "{m[2]}" not found')
        return 404, _status(404, "NotFound", "the server could not find the requested "
                            "resource")

    def patch(self, path: str, ctype: str, ops) -> tuple[int, dict]:
        m = re.fullmatch(r"/apis/ray\.io/v1/namespaces/([^/]+)/rayclusters/([^/]+)", path)
        if not m or (m[1], m[2]) not in self.rayclusters:
            return 404, _status(404, "NotFound", "not found")
        if ctype != "application/json-patch+json" or not isinstance(ops, list):
            return 415, _status(415, "UnsupportedMediaType", f"unsupported {ctype}")
        obj = copy.deepcopy(self.rayclusters[(m[1], m[2])])
        for op in ops:  # the JSON-patch subset used: test / replace / add
            *parents, last = op["path"].strip("/").split("/")
            node = obj
            for p in parents:
                node = node[int(p)] if isinstance(node, list) else node[p]
            key = int(last) if isinstance(node, list) else last
            if op["op"] == "test":
                if node[key] != op["value"]:
                    return 422, _status(422, "Invalid", f"test failed at {op['path']}")
            elif op["op"] in ("replace", "add"):
                node[key] = op["value"]
            else:
                return 422, _status(422, "Invalid", f"unsupported op {op['op']}")
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        self.rayclusters[(m[1], m[2])] = obj
        return 200, obj

    def pods(self, namespace: str) -> list[dict]:
        """The RayCluster's pods: the head and one per worker replica it asks for."""
        rc = self.rayclusters.get((namespace, CLUSTER))
        if rc is None:
            return []
        names = [f"{CLUSTER}-head"] + [
            f"{CLUSTER}-{g['groupName']}-{i}" for g in rc["spec"].get("workerGroupSpecs", [])
            for i in range(int(g.get("replicas") or 0))]
        ready = "True" if self.pods_ready else "False"
        return [{"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": n, "namespace": namespace, "labels": {"ray.io/cluster": CLUSTER}},
                 "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}]}}
                for n in names]

    def group(self, name: str = "workers") -> dict:
        rc = self.rayclusters[(NS, CLUSTER)]
        return next(g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == name)

    def patches(self) -> list:
        return [r for r in self.requests if r[0] == "PATCH"]

    def kubeconfig(self, path: Path, port: int | None = None) -> Path:
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
               "clusters": [{"name": "fake", "cluster": {
                   "server": f"http://127.0.0.1:{port or self.port}"}}],
               "users": [{"name": "fake", "user": {"token": "fake-bearer"}}],
               "contexts": [{"name": "fake", "context": {"cluster": "fake",
                                                          "user": "fake"}}]}
        path.write_text(yaml.safe_dump(cfg))
        return path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
