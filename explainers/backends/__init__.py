"""Ray backends of :class:`explainers.distributed.DistributedKernelShap`.

Each module exposes ``Workers(engine_ref, config)`` with ``explain(X, assembler) -> dict``
(puts every row's values of ``X`` (n, D) into ``assembler``; returns run facts) and
``wait_ready()`` (block until the workers are up) and
``close()`` (nothing of it left running afterwards).
"""
