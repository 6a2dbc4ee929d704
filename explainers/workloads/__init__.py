"""Workloads the bench explains: the reference Adult model and any team's own (``--workload``).

- :mod:`explainers.workloads.workload`: :class:`Workload`, :func:`load_workload` of a
  ``MODULE:CALLABLE`` spec (validated, errors as :class:`WorkloadError`), :func:`check_instances`;
- :mod:`explainers.workloads.adult`: the reference Adult workload (the default, ``adult:workload``);
- :mod:`explainers.workloads.breast_cancer`: a second one bundled with scikit-learn (no network).
"""
