"""The cluster connection: a local Ray, ``auto``, ``ray://`` and a KubeRay cluster."""
