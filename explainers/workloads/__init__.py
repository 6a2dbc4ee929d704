"""Workloads the bench explains: the reference Adult model and any team's own (``--workload``)."""
