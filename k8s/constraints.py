"""Print k8s/constraints.txt: exact pins of the project's runtime dependency closure.

    python k8s/constraints.py > k8s/constraints.txt

Run it in the environment the tests pass in (the venv with the project installed). It
starts from the installed project's requirements (``[project] dependencies`` in
pyproject.toml, no extras, so test-only packages stay out), follows the requirements of
each installed dependency (with the extras asked for, e.g. ``ray[serve,data,client]``,
markers evaluated for this interpreter and platform) and prints ``name==version`` for
every package reached, as ``pip list --format=freeze`` spells it, excluding the project
itself. k8s/Dockerfile installs with ``pip install -c k8s/constraints.txt``, so the image
gets the versions that were tested; tests/test_faults_k8s_hardening.py fails when the
file is not what this script prints.
"""
from __future__ import annotations

import importlib.metadata as md
import sys

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "distributed-kernelshap"
COMMAND = "python k8s/constraints.py > k8s/constraints.txt"


def _wanted(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = dict(default_environment())
    return any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}))


def closure(project: str = PROJECT) -> dict[str, str]:
    """``{canonical name: (display name, version)}`` of what ``project`` needs at run time."""
    found: dict[str, tuple[str, str]] = {}
    todo: list[tuple[str, set[str]]] = [(project, set())]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), frozenset(extras))
        if key in done:
            continue
        done.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:  # a marker-less optional dependency not installed
            continue
        found[canonicalize_name(dist.metadata["Name"])] = (dist.metadata["Name"], dist.version)
        for line in dist.requires or []:
            req = Requirement(line)
            if _wanted(req, extras):
                todo.append((req.name, set(req.extras)))
    found.pop(canonicalize_name(project), None)
    return found


def main() -> int:
    pins = closure()
    try:
        project_version = md.version(PROJECT)
    except md.PackageNotFoundError:
        print(f"{PROJECT} is not installed here (pip install -e .)", file=sys.stderr)
        return 1
    print(f"# Exact versions of the runtime dependency closure of {PROJECT} "
          f"{project_version}, as tested.")
    print(f"# Generated, do not edit. Regenerate from the tested venv with: {COMMAND}")
    print("# (Python {}.{}; used by k8s/Dockerfile as `pip install -c constraints.txt`)"
          .format(*sys.version_info[:2]))
    for _canon, (name, version) in sorted(pins.items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
