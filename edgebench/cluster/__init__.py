"""The cluster: models deployed on Dask workers, requests routed straight to the replicas,
fault tolerance, live migration, autoscaling, tenants and graph partitioning.

    >>> cl = eb.Cluster.local(n_workers=2)                         # doctest: +SKIP
    >>> dep = cl.deploy(eb.zoo.load("mlp"), replicas=2)            # doctest: +SKIP
    >>> dep.run({"input": x}); cl.workers; cl.events               # doctest: +SKIP

Pure policy code (placement, routing, partitioning, autoscale targets) lives in
:mod:`.policy` and :mod:`.partition`, with no Dask import: the synthetic testbed
(:mod:`.testbed`) drives the very same functions on simulated fleets.
"""
from __future__ import annotations

_LAZY = {"Cluster": ".api", "Deployment": ".deployment", "EventLog": ".events", "TenantLimits": ".tenants",
         "PartitionPlan": ".partition", "partition_graph": ".partition", "simulate": ".testbed",
         "scale_study": ".testbed", "DistributedGraph": ".graph_parts"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'edgebench.cluster' has no attribute {name!r}")
