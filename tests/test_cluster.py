"""``explainers.cluster.session``: address forms, CPU splitting, argument checks (no Ray started here).

Starting and stopping real clusters (one node, two nodes, ``ray://``) is covered through
the plugin in ``tests/test_plugin.py``.
"""
from __future__ import annotations

import pytest

from explainers.cluster.session import K8sOptions, address_mode, connect, split_cpus
from explainers.cluster.ray_client import init_ray_client, is_transient_start_failure


@pytest.mark.parametrize(
    "address, mode",
    [(None, "local"), ("", "local"), ("local", "local"), ("auto", "auto"), ("k8s", "k8s"),
     ("ray://127.0.0.1:10001", "client"), ("ray://head-svc:10001/", "client"), (" auto ", "auto")],
)
def test_address_modes(address, mode):
    assert address_mode(address) == mode


@pytest.mark.parametrize("address", ["ray://host", "ray://host:0", "ray://host:70000", "tcp://h:1", "locale", "10.0.0.1:6379"])
def test_bad_addresses_name_the_allowed_forms(address):
    with pytest.raises(ValueError, match=r"'local', 'auto', 'ray://HOST:PORT' or 'k8s'|port must be in 1\.\.65535"):
        address_mode(address)


@pytest.mark.parametrize("total, nodes, expected", [(2, 2, [1, 1]), (5, 2, [3, 2]), (4, 1, [4]), (7, 3, [3, 2, 2])])
def test_split_cpus(total, nodes, expected):
    assert split_cpus(total, nodes) == expected
    assert sum(split_cpus(total, nodes)) == total


def test_split_cpus_needs_one_cpu_per_node():
    with pytest.raises(ValueError, match="every node needs at least 1 CPU"):
        split_cpus(1, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(address="local", nodes=0), "nodes must be an int >= 1"),
        (dict(address="auto", nodes=2), "apply to address 'local' only"),
        (dict(address="ray://h:1", num_cpus=2), "apply to address 'local' only"),
        (dict(address="local", num_cpus=0), "num_cpus must be an int >= 1"),
    ],
)
def test_connect_rejects_bad_arguments_before_starting_anything(kwargs, message):
    import ray

    with pytest.raises(ValueError, match=message):
        connect(**kwargs)
    assert not ray.is_initialized()


def test_k8s_failure_leaves_nothing_connected(tmp_path):
    import ray

    with pytest.raises(Exception) as info:
        connect("k8s", k8s=K8sOptions(kubeconfig=str(tmp_path / "missing-kubeconfig"), timeout=5))
    assert "kubeconfig" in str(info.value).lower()
    assert not ray.is_initialized()


ZOMBIE = ("Initialization failure from server:\nTraceback (most recent call last):\n"
          "  File \"proxier.py\", line 396, in start_specific_server\n"
          "psutil.ZombieProcess: PID still exists but it's a zombie (pid=24170)")


@pytest.mark.parametrize("exc, transient", [
    (ConnectionAbortedError(ZOMBIE), True),
    (ConnectionAbortedError("Initialization failure from server: Starting Ray client server "
                            "failed. See ray_client_server_23000.err for detailed logs."), True),
    (RuntimeError("Version mismatch: The cluster was started with: Ray: 2.59.0 ..."), False),
    (ConnectionAbortedError("Initialization failure from server: authentication failed"), False),
    (ConnectionError("ray client connection timeout"), False),
])
def test_transient_client_start_failures(exc, transient):
    assert is_transient_start_failure(exc) is transient


def test_client_init_retries_only_transient_failures(monkeypatch):
    import ray

    calls = []

    def flaky_init(address, **kwargs):
        calls.append(address)
        if len(calls) == 1:
            raise ConnectionAbortedError(ZOMBIE)
        return "context"

    monkeypatch.setattr(ray, "init", flaky_init)
    assert init_ray_client("ray://127.0.0.1:1", pause=0) == "context"
    assert len(calls) == 2

    def wrong_version(address, **kwargs):
        calls.append(address)
        raise RuntimeError("Version mismatch: Ray: 2.59.0 Python: 3.11.2")

    calls.clear()
    monkeypatch.setattr(ray, "init", wrong_version)
    with pytest.raises(RuntimeError, match="Version mismatch"):
        init_ray_client("ray://127.0.0.1:1", pause=0)
    assert len(calls) == 1
