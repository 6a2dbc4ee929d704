"""``explainers.cluster``: address forms, CPU splitting, argument checks (no Ray started here).

Starting and stopping real clusters (one node, two nodes, ``ray://``) is covered through
the plugin in ``tests/test_plugin.py``.
"""
from __future__ import annotations

import pytest

from explainers.cluster import K8sOptions, address_mode, connect, split_cpus


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
