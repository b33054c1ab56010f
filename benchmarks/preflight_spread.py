"""The pre-flight check spread over a 3-node `ray.cluster_utils.Cluster` against the same check on one node.

    python -m benchmarks.preflight_spread [--n 20000] [--work DIR]

The files are the scale benchmark's generated faces (`python -m benchmarks.scale` writes them; 128 px JPEGs).
One node: `check_images` on the driver's threads (what a single-node run does). Three nodes of 1 CPU each (all on
this machine): `SpreadCheck`, chunks of 1,000 files as Ray tasks with the SPREAD strategy. On one machine the
three nodes share its cores, so the time cannot drop; what is measured is that the work lands on every node and
what spreading costs. On a real cluster each node brings its own cores and disks.
Writes results/preflight_spread.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/raydf/bench-scale")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/preflight_spread.json")
    args = parser.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    from raydf.data.images import check_images
    from raydf.distributed.preflight import SpreadCheck

    paths = [str(args.work / "images" / f"{i // 1000:04d}" / f"{i:07d}.jpg") for i in range(args.n)]
    missing = [p for p in paths[:: max(1, args.n // 100)] if not os.path.exists(p)]
    if missing:
        raise SystemExit(f"{missing[0]} is missing: run python -m benchmarks.scale first (it writes the images)")
    list(map(os.path.getsize, paths))  # stat every file once, so that neither side pays for a cold directory cache

    t0 = time.time()
    reasons_local, hashes_local = check_images(paths)
    local_s = time.time() - t0

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        cluster.wait_for_nodes()
        spread = SpreadCheck()
        t0 = time.time()
        reasons, hashes = spread(paths)
        spread_s = time.time() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()
    result = {
        "files": args.n,
        "cpus": os.cpu_count(),
        "one_node_threads_s": local_s,
        "three_nodes_spread_s": spread_s,
        "files_per_node": sorted(spread.rows_per_node.values(), reverse=True),
        "same_findings": reasons == reasons_local and hashes == hashes_local,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
