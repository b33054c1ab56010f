"""Run a `ray.cluster_utils.Cluster` in its own process, driven by JSON lines on stdin (test helper).

The test process itself never calls `ray.init`, so the session-scoped `ray_local` fixture is unaffected.
`Cluster` records its address in `$RAY_TMPDIR/ray/ray_current_cluster`, where any plain `ray.init()` on
this machine would find and join it: the caller gives this process a private `RAY_TMPDIR`.

Commands, one JSON object per line; every reply is one JSON line on stdout:
  {"head": {...node args}}      -> {"address": "ip:port"}
  {"add_node": {...node args}}  -> {"node_id": "..."}
  end of input                  -> the cluster is shut down and the process exits
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from ray.cluster_utils import Cluster

    cluster = None
    reply = sys.stdout
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if "head" in command:
                cluster = Cluster(initialize_head=True, connect=False, head_node_args=command["head"])
                out = {"address": cluster.address}
            elif "add_node" in command:
                node = cluster.add_node(**command["add_node"])
                out = {"node_id": node.node_id}
            else:
                out = {"error": f"unknown command {command}"}
            reply.write(json.dumps(out) + "\n")
            reply.flush()
    finally:
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    main()
