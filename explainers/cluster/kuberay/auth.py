"""Ray token authentication of a RayCluster: whether it is required, and finding the token.

The token is taken from, in order: the ``token`` argument, ``$RAY_AUTH_TOKEN``, the file
named by ``$RAY_AUTH_TOKEN_PATH``, and the Kubernetes Secret the RayCluster reads it from.
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from .api import K8sError, KubeApi, api_call

__all__ = ["AuthRequirement", "auth_requirement", "resolve_token", "TOKEN_SECRET_KEY",
           "TOKEN_HELP"]

#: the data key of the token Secret (KubeRay's convention)
TOKEN_SECRET_KEY = "auth_token"
TOKEN_HELP = (
    "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH to a file holding it), e.g. "
    "export RAY_AUTH_TOKEN=$(kubectl get secret {secret} -n {ns} "
    "-o jsonpath='{{.data.{key}}}' | base64 -d)"
)
#: what to do about a token the head refused (or a missing one), for any transport
SECRET_TOKEN_HELP = ("set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the value of the Secret "
                     f"the RayCluster reads RAY_AUTH_TOKEN from (key {TOKEN_SECRET_KEY!r})")


@dataclass
class AuthRequirement:
    """What a RayCluster says about Ray token authentication."""

    required: bool
    secret_name: Optional[str] = None
    secret_key: str = TOKEN_SECRET_KEY


def _head_env(raycluster: Mapping) -> dict[str, Mapping]:
    """The env entries of the head pod's containers, by name."""
    containers = (raycluster.get("spec", {}).get("headGroupSpec", {}).get("template", {})
                  .get("spec", {}).get("containers", []))
    return {e.get("name"): e for c in containers for e in (c.get("env") or [])}


#: the longest name KubeRay keeps for the objects it names after a RayCluster
KUBERAY_NAME_LIMIT = 50


def operator_secret_name(cluster: str) -> str:
    """The token Secret KubeRay makes for RayCluster ``cluster`` without ``secretName``: the
    name as its ``CheckName`` shortens it (the last 50 characters; a leading digit or
    punctuation mark becomes ``r``)."""
    name = cluster[-KUBERAY_NAME_LIMIT:]
    if name and not name[0].isalpha():
        name = "r" + name[1:]
    return name


def auth_requirement(raycluster: Mapping) -> AuthRequirement:
    """Read token-auth settings from a RayCluster: ``spec.authOptions`` or the head env.

    ``authOptions.enableK8sTokenAuth`` (Kubernetes ServiceAccount tokens) names no Secret:
    the token must then come from ``$RAY_AUTH_TOKEN``.
    """
    opts = raycluster.get("spec", {}).get("authOptions") or {}
    name = str(raycluster.get("metadata", {}).get("name") or "")
    if opts.get("mode") == "token":
        if opts.get("enableK8sTokenAuth"):
            return AuthRequirement(True, None, TOKEN_SECRET_KEY)
        return AuthRequirement(True, opts.get("secretName") or operator_secret_name(name),
                               TOKEN_SECRET_KEY)
    env = _head_env(raycluster)
    mode = (env.get("RAY_AUTH_MODE") or {}).get("value", "")
    if str(mode).lower() != "token":
        return AuthRequirement(False)
    ref = ((env.get("RAY_AUTH_TOKEN") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    return AuthRequirement(True, ref.get("name"), ref.get("key", TOKEN_SECRET_KEY))


def resolve_token(api: Optional[KubeApi], namespace: str, auth: AuthRequirement,
                  token: Optional[str] = None) -> Optional[str]:
    """Find the Ray auth token: argument, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, Secret.

    Returns None when none is found and the cluster does not declare token auth; raises
    :class:`K8sError` when it does.
    """
    if token:
        return token.strip()
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            value = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise K8sError(f"RAY_AUTH_TOKEN_PATH={path!r} cannot be read: {exc}") from None
        if not value:
            raise K8sError(f"RAY_AUTH_TOKEN_PATH={path!r} is empty")
        return value
    if not auth.required:
        return None
    why = "the RayCluster names no Secret for it"
    if api is not None and auth.secret_name:
        from kubernetes.client.exceptions import ApiException
        try:
            secret = api_call(api, f"read Secret {namespace}/{auth.secret_name}",
                              api.core.read_namespaced_secret, auth.secret_name, namespace)
            data = (secret.data or {}).get(auth.secret_key)
            if data:
                return base64.b64decode(data).decode().strip()
            why = f"Secret {auth.secret_name!r} has no key {auth.secret_key!r}"
        except ApiException as exc:
            why = f"Secret {auth.secret_name!r} not readable (HTTP {exc.status})"
        except K8sError as exc:
            why = str(exc)
    raise K8sError(
        "the RayCluster requires Ray token authentication (spec.authOptions.mode: token or "
        "RAY_AUTH_MODE=token) but no token "
        f"was found ({why}): " + TOKEN_HELP.format(
            secret=auth.secret_name or "<secret>", ns=namespace, key=auth.secret_key))
