"""The pre-flight check spread over the cluster: chunks of the file list as Ray tasks, placed on every node.

Reading, decoding and hashing every file is the pre-flight's whole cost; on one driver it grows with the set
(~1-2 ms an image per core: about an hour on one core for 3.2 M face crops). Spread, every node's cores share it.
The files must be readable from every node (shared storage or URIs), as for training on a cluster.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Optional, Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raydf.data.images import check_images

log = logging.getLogger(__name__)

CHUNK = 1000  # files per task: ~1-2 s of work, small enough to balance, large enough that scheduling is cheap


@ray.remote(num_cpus=1, max_retries=3, scheduling_strategy="SPREAD")
def _check_chunk(paths: list[str]) -> tuple[dict[int, str], list[Optional[str]], str]:
    reasons, hashes = check_images(paths, threads=1)
    return reasons, hashes, ray.get_runtime_context().get_node_id()


def node_ids() -> list[str]:
    """The alive nodes with CPUs."""
    return [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]


def cluster_nodes() -> int:
    return len(node_ids())


class SpreadCheck:
    """A `raydf.data.preflight.Check` that runs as Ray tasks; `rows_per_node` says where the work went."""

    def __init__(self, chunk: int = CHUNK):
        self.chunk = chunk
        self.rows_per_node: collections.Counter[str] = collections.Counter()

    def __call__(self, paths: Sequence[str]) -> tuple[dict[int, str], list[Optional[str]]]:
        t0, n = time.time(), len(paths)
        starts = list(range(0, n, self.chunk))
        # Chunks dealt to the nodes in turn (soft affinity: a node gone runs its chunks elsewhere). Ray's SPREAD
        # strategy alone left every chunk on one node of a loaded test cluster, where the others' workers were cold.
        nodes = node_ids() or [None]
        refs = {
            _check_chunk.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=True)
                if nodes[0]
                else "SPREAD"
            ).remote(list(paths[s : s + self.chunk])): s
            for i, s in enumerate(starts)
        }
        reasons: dict[int, str] = {}
        hashes: list[Optional[str]] = [None] * n
        try:
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=min(len(pending), 16), timeout=5.0)
                for ref in done:
                    start = refs[ref]
                    chunk_reasons, chunk_hashes, node = ray.get(ref)
                    reasons.update({start + i: r for i, r in chunk_reasons.items()})
                    hashes[start : start + len(chunk_hashes)] = chunk_hashes
                    self.rows_per_node[node] += len(chunk_hashes)
        except BaseException:  # Ctrl-C or an error: the chunks not done are cancelled, not left running
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        spread = ", ".join(f"{node[:8]}: {rows}" for node, rows in self.rows_per_node.most_common())
        log.info(
            "pre-flight spread over %d nodes: %d files in %d tasks in %.1fs (files per node: %s)",
            len(self.rows_per_node),
            n,
            len(starts),
            time.time() - t0,
            spread,
        )
        return reasons, hashes


def preflight_check(n_files: int, spread_min: int) -> Optional[SpreadCheck]:
    """A SpreadCheck when the set is large enough (`data.preflight_spread_min`) and the cluster has several nodes."""
    if spread_min < 0 or n_files < spread_min or cluster_nodes() < 2:
        return None
    return SpreadCheck()
