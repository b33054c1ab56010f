"""The ensemble on Ray Serve: a FastAPI ingress deployment that batches concurrent requests (`@serve.batch`).

Each replica holds all K fold models (their weights come through the object store) and answers `POST /predict`
(an image as the multipart form field `file`), `GET /health`, the web page at `/` and the OpenAPI docs at `/docs`.
Nothing is written to disk per request: the upload's body is capped and held in memory.
"""

# No `from __future__ import annotations`: FastAPI reads the route parameters' annotations (UploadFile, File) at
# run time, and as strings they do not resolve inside a Serve ingress class.
import asyncio
import base64
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Optional, Sequence

import numpy as np
import ray
import torch
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from starlette.formparsers import MultiPartParser

from raydf.config import ServeConfig
from raydf.data.images import resize_square
from raydf.inference.ensemble import EnsembleSettings, FoldEnsemble
from raydf.inference.upload import BadUpload, decode_upload
from raydf.runs.submission import confident_mean

log = logging.getLogger(__name__)

APP_NAME = "raydf"
MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around the file in a multipart body

# Starlette spools a form's file to a temporary file on disk past 1 MiB. The body is capped below (BodyLimit), so
# holding the whole upload in memory is bounded, and no upload ever touches the disk.
MultiPartParser.spool_max_size = 2**40

api = FastAPI(
    title="raydf",
    description="Real/fake face classification by the soft vote of a raydf run's K fold models.",
)


class BodyLimit:
    """ASGI middleware: a request body over `limit["bytes"]` gets 413 before it is read whole (by its
    Content-Length, or while it streams in when it has none)."""

    limit = {"bytes": 16 * 2**20 + MULTIPART_SLACK}  # set by each replica from serve.max_upload_mb

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_bytes = self.limit["bytes"]
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            return await _send_json(send, 413, _too_large(int(length), max_bytes))
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, _too_large(seen, max_bytes))


class _TooLarge(Exception):
    pass


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"the request body is {size / 2**20:.1f} MiB or more; uploads are limited to "
        f"{(max_bytes - MULTIPART_SLACK) / 2**20:.1f} MiB (serve.max_upload_mb)"
    )


async def _send_json(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


api.add_middleware(BodyLimit)


@api.exception_handler(RequestValidationError)
async def _missing_file(request, exc: RequestValidationError) -> JSONResponse:
    fields = sorted({str(err.get("loc", ["", "?"])[-1]) for err in exc.errors()})
    return JSONResponse(
        {
            "error": f"bad request ({', '.join(fields)}): send the image as the multipart form field 'file', "
            f"e.g. curl -F file=@face.jpg http://HOST:PORT/predict"
        },
        status_code=400,
    )


@dataclass
class Scored:
    """One upload's answer: the soft vote, each fold's P(fake), and the face(s) it came from."""

    prob_fake: float
    folds: list[float]  # P(fake) per fold (for a photo: each fold's per-face probabilities aggregated)
    image: np.ndarray  # (resize, resize, 3) what was scored (a photo's first face): the heatmap's input
    faces: list[dict[str, Any]] = field(default_factory=list)  # box (x1, y1, x2, y2 in the upload), prob_fake, score


AGGREGATE = {"mean": np.mean, "median": np.median, "confident": confident_mean}


@serve.deployment(name="EnsembleServer")
@serve.ingress(api)
class EnsembleServer:
    """One replica: the K fold models and the HTTP routes."""

    def __init__(
        self,
        weights: list,
        settings: EnsembleSettings,
        info: dict[str, Any],
        limits: dict[str, int],
        batching: dict[str, float],
        threads: int,
        faces: Optional[dict[str, Any]] = None,
        aggregate: str = "mean",
    ):
        # The weights arrive as ObjectRefs inside a list (Serve resolves only top-level refs): fetched once here.
        states = ray.get(list(weights))
        torch.set_num_threads(max(1, threads))
        self.ensemble = FoldEnsemble(states, settings)
        self.settings, self.info, self.limits = settings, info, limits
        BodyLimit.limit["bytes"] = limits["max_bytes"] + MULTIPART_SLACK
        self._score.set_max_batch_size(int(batching["max_batch_size"]))
        self._score.set_batch_wait_timeout_s(float(batching["batch_wait_timeout_s"]))
        self.page = resources.files("raydf.web").joinpath("index.html").read_text(encoding="utf-8")
        # A run trained on extracted faces: the faces of each upload are found with the run's own settings
        # (MTCNN, margin, size), scored, and aggregated like raydf.predict aggregates a photo's faces.
        self.extractor = None
        if faces:
            from raydf.data.faces import FaceExtractor, FaceSettings

            self.extractor = FaceExtractor(FaceSettings(**faces), device=str(self.ensemble.device))
        self.reduce = AGGREGATE[aggregate]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)  # both set from serve.* in __init__
    async def _score(self, uploads: list[tuple[str, bytes]]) -> list[Scored | BadUpload]:
        """Concurrent requests' uploads (name, bytes), decoded and put through the K models in one batch: for each
        its Scored answer or the BadUpload that says why it cannot be scored."""
        return await asyncio.to_thread(self._decode_and_predict, uploads)

    def _decode_and_predict(self, uploads: list[tuple[str, bytes]]) -> list[Scored | BadUpload]:
        # Decoding here, in the batch's worker thread, rather than in each request's handler: the handlers then only
        # queue their bytes, so requests reach the batch while the previous one computes (decoding in the handlers
        # starved the replica's event loop and left batches of one request under load).
        results: list[Any] = []
        for name, data in uploads:  # each: (faces (F, resize, resize, 3), their boxes and scores) or BadUpload
            try:
                results.append(self._faces(name, data))
            except BadUpload as e:
                results.append(e)
        good = [i for i, r in enumerate(results) if not isinstance(r, BadUpload)]
        if not good:
            return results
        probs = self.ensemble.predict(np.concatenate([results[i][0] for i in good]))  # (K, all faces)
        start = 0
        for i in good:
            crops, boxes, scores = results[i]
            p = probs[:, start : start + len(crops)]  # (K, F)
            start += len(crops)
            per_face = self.ensemble.soft_vote(p)  # the run's calibrated vote (calibration.json), else the mean
            faces = [
                {"box": [round(float(v), 1) for v in box], "prob_fake": float(pf), "score": sc}
                for box, pf, sc in zip(boxes, per_face, scores)
            ]
            folds = [float(self.reduce(p[k])) for k in range(len(p))]
            results[i] = Scored(float(self.reduce(per_face)), folds, crops[0], faces)
        return results

    def _faces(self, name: str, data: bytes) -> tuple[np.ndarray, list, list]:
        """(crops (F, resize, resize, 3), boxes, detection scores) of one upload: the whole image for a run
        trained on face crops, else the faces MTCNN finds in it."""
        size = self.settings.resize
        image = decode_upload(data, name, self.limits["max_bytes"], self.limits["max_pixels"])  # (H, W, 3)
        if self.extractor is None:
            h, w = image.shape[:2]
            return resize_square(image, size)[None], [[0, 0, w, h]], [None]
        found = self.extractor.faces_of([(0, image)])
        if not found.faces:
            raise BadUpload(f"{name}: {found.reason}; send a photo with a face", 422)
        crops = np.stack([resize_square(f.crop, size) for f in found.faces])
        return crops, [f.box for f in found.faces], [round(f.score, 4) for f in found.faces]

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> str:
        return self.page

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        """Liveness, and which run and backbone this server holds."""
        return {"status": "ok", **self.info}

    @api.post("/predict")
    async def predict(
        self,
        file: UploadFile = File(..., description="an image file (JPEG, PNG, WebP, BMP, ...) of a face crop"),
        heatmap: bool = Query(False, description="also return a Grad-CAM heatmap of P(fake) over the face (PNG)"),
    ) -> JSONResponse:
        """P(fake) of the uploaded image by the soft vote of the run's fold models."""
        name = file.filename or "upload"
        result = await self._score((name, await file.read()))
        if isinstance(result, BadUpload):
            return JSONResponse({"error": str(result)}, status_code=result.status)
        body: dict[str, Any] = {
            "prob_fake": result.prob_fake,
            "label": "fake" if result.prob_fake > self.settings.calibration.threshold else "real",
            "prob_fake_folds": result.folds,
            "faces": result.faces,
            "file": name,
            **self.info,
        }
        if heatmap:
            body["heatmap_png"] = await asyncio.to_thread(self._heatmap, result.image)
        return JSONResponse(body)

    def _heatmap(self, image: np.ndarray) -> str:
        """Grad-CAM of P(fake) over the model's input (the centre crop), as a base64 PNG overlay."""
        from raydf.data.images import center_crop
        from raydf.inference.heatmap import grad_cam, overlay_png

        heat = grad_cam(self.ensemble, image[None])[0]
        face = center_crop(image[None], self.settings.crop)[0]
        return base64.b64encode(overlay_png(face, heat)).decode("ascii")


def replica_options(cfg: ServeConfig, cluster_gpus: float, node_cpus: Sequence[int]) -> dict[str, Any]:
    """Serve deployment options from serve.*: one replica per GPU (or one using a node's cores on CPU), or
    autoscaling between serve.autoscaling's bounds."""
    gpu = cluster_gpus >= 1
    cpus = cfg.cpus_per_replica or (1 if gpu else max(1, min(node_cpus or [1])))
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cpus, "num_gpus": 1 if gpu else 0},
        "max_ongoing_requests": cfg.max_ongoing_requests,
    }
    if cfg.autoscaling:
        options["autoscaling_config"] = dict(cfg.autoscaling)
    else:
        options["num_replicas"] = cfg.replicas or (int(cluster_gpus) if gpu else 1)
    return options


def serve_ensemble(
    weights: Sequence[ray.ObjectRef],
    settings: EnsembleSettings,
    info: dict[str, Any],
    cfg: ServeConfig,
    cluster_gpus: float,
    node_cpus: Sequence[int],
    host: Optional[str] = None,
    port: Optional[int] = None,
    faces: Optional[dict[str, Any]] = None,
    aggregate: str = "mean",
) -> dict[str, Any]:
    """Start Serve's HTTP proxy on host:port and deploy the ensemble; returns the deployment options used.

    `faces`: the run's face settings when it was trained on extracted faces (uploads are then photos whose faces
    are found and aggregated by `aggregate`); None when it was trained on face crops."""
    options = replica_options(cfg, cluster_gpus, node_cpus)
    app = EnsembleServer.options(**options).bind(
        list(weights),
        settings,
        info,
        {"max_bytes": int(cfg.max_upload_mb * 2**20), "max_pixels": cfg.max_pixels},
        {"max_batch_size": cfg.max_batch_size, "batch_wait_timeout_s": cfg.batch_wait_timeout_s},
        int(options["ray_actor_options"]["num_cpus"]),
        faces,
        aggregate,
    )
    # Serve's INFO lines (proxy and controller start-up, one access line per request) only with -v, like Ray's.
    level = "INFO" if logging.getLogger("ray").getEffectiveLevel() <= logging.INFO else "WARNING"
    logging.getLogger("ray.serve").setLevel(level)  # the driver's own Serve lines ("Started Serve ...")
    serve.start(http_options={"host": host or cfg.host, "port": port or cfg.port}, logging_config={"log_level": level})
    serve.run(app, name=APP_NAME, route_prefix="/", logging_config={"log_level": level})
    return options


def stop_serving() -> None:
    """Remove the application from a running cluster, which may serve others (Serve itself keeps running there; a
    local instance goes with its Ray session)."""
    try:
        serve.delete(APP_NAME)
    except Exception as e:  # the cluster went away first: nothing left to stop
        log.debug("removing the Serve application: %s", e)
