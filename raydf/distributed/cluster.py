"""What the connected Ray cluster is made of, and whether every node can read the files its tasks will read."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raydf.errors import DataError

HEAD_MARKER = "node:__internal_head__"  # a resource only the head node advertises


def alive_nodes() -> list[dict[str, float]]:
    """The resources of every alive node (CPU, GPU, memory, ...), from the GCS."""
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def describe_cluster() -> str:
    """One line for the cluster, one per node: the driver's log says what it is running on."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    lines = [f"Ray cluster: {len(nodes)} node(s), {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU"]
    for n in sorted(nodes, key=lambda n: (HEAD_MARKER not in n["Resources"], n["NodeManagerAddress"])):
        r = n["Resources"]
        role = "head" if HEAD_MARKER in r else "worker"
        lines.append(
            f"  {role} {n['NodeManagerAddress']} {n['NodeID'][:12]}: {r.get('CPU', 0):g} CPU, "
            f"{r.get('GPU', 0):g} GPU, object store {r.get('object_store_memory', 0) / 2**30:.1f} GiB"
        )
    return "\n".join(lines)


@ray.remote(num_cpus=0)
def _unreadable(paths: list[str]) -> tuple[str, list[str]]:
    return ray.util.get_node_ip_address(), [p for p in paths if not os.access(p, os.R_OK)]


def check_readable_on_every_node(paths: Sequence[str], key: str, sample: int = 32) -> None:
    """Refuse early (before hours of training) when a node that may decode `paths` cannot read them.

    Ray Data decodes the test images in tasks on any node with a CPU, so each such node must see the same
    files at the same paths (a shared file system, or a copy on every node). Checks `sample` paths spread
    over the list on each node with a zero-CPU task pinned there; nodes the autoscaler starts later are
    not checked.
    """
    if not paths:
        return
    picked = [str(paths[i]) for i in np.unique(np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(int))]
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    checks = [
        _unreadable.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(picked)
        for node in nodes
    ]
    for check in checks:
        try:
            ip, missing = ray.get(check)
        except ray.exceptions.RayError:  # the node went away meanwhile: nothing learnt about the files
            continue
        if missing:
            raise DataError(
                f"{key}: {len(missing)} of {len(picked)} sampled images cannot be read on node {ip} of the Ray "
                f"cluster, e.g. {missing[0]}. Ray Data decodes them on every node, so every node needs them at "
                f"the same path: put them on a shared file system mounted on every node, or copy them to every "
                f"node (cluster.yaml: file_mounts or setup_commands; see README, 'Run on a cluster')"
            )
