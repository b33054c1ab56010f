"""Serving a finished run: its K fold models on Ray Serve until a stop signal."""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional, Sequence

from raydf.pipelines.prediction import load_finished_run, run_calibration, run_face_settings

log = logging.getLogger(__name__)


def serve_run(
    run_dir: str,
    overrides: Sequence[str] = (),
    host: Optional[str] = None,
    port: Optional[int] = None,
    address: Optional[str] = None,
    on_ready: Optional[Callable[[str], None]] = None,
) -> None:
    """Serve the run's soft vote over HTTP on host:port (serve.* keys) until Ctrl-C or SIGTERM.

    `on_ready(url)` is called once the application answers; the stop signal arrives as KeyboardInterrupt
    (raydf.signals), after the application was removed from the cluster.
    """
    import ray

    from raydf.distributed.cluster import alive_nodes
    from raydf.distributed.serving import serve_ensemble, stop_serving
    from raydf.distributed.session import ray_session
    from raydf.inference.ensemble import EnsembleSettings

    cfg, checkpoints = load_finished_run(run_dir, overrides)
    calibration = run_calibration(run_dir, checkpoints)  # the soft vote's calibration and threshold, when fitted
    settings = EnsembleSettings.from_config(cfg, calibration)
    faces = run_face_settings(cfg)  # a run trained on extracted faces: uploads are photos, their faces are found
    info = {
        "run": str(run_dir),
        "model": cfg.model.name,
        "folds": len(checkpoints),  # models: K x S in a run of several seeds (prob_fake_folds has one value each)
        "crop": cfg.data.crop,
        # Whether uploads are photos whose faces are found, or face crops (named apart from the answers' "faces").
        "face_detection": "mtcnn" if faces else "none",
        "calibration": calibration.method,  # how prob_fake is made from the folds' (prob_fake_folds)
        "threshold": calibration.threshold,  # label = fake when prob_fake > threshold
    }
    host, port = host or cfg.serve.host, port or cfg.serve.port
    with ray_session(address or cfg.ray.address) as session:
        refs = [ray.put({k: v.numpy() for k, v in weights.items()}) for weights, _ in checkpoints]
        node_cpus = [int(n.get("CPU", 0)) for n in alive_nodes() if n.get("CPU", 0) >= 1]
        try:
            options = serve_ensemble(
                refs,
                settings,
                info,
                cfg.serve,
                ray.cluster_resources().get("GPU", 0),
                node_cpus,
                host,
                port,
                faces=faces,
                aggregate=cfg.predict.aggregate,
            )
            shown = "localhost" if host in ("127.0.0.1", "::1") else host
            url = f"http://{shown}:{port}/"
            replicas = options.get("num_replicas") or f"autoscaling {options.get('autoscaling_config')}"
            log.info(
                "serving %d fold models of %s (%s) on %s replica(s), %s each; batches of up to %d",
                len(checkpoints),
                run_dir,
                cfg.model.name,
                replicas,
                options["ray_actor_options"],
                cfg.serve.max_batch_size,
            )
            if host not in ("127.0.0.1", "localhost", "::1"):
                log.warning(
                    "serve.host=%s: the server accepts requests from other machines, with no authentication", host
                )
            if on_ready:
                on_ready(url)
            while True:
                time.sleep(3600)
        finally:
            if session.existing_cluster:
                stop_serving()
