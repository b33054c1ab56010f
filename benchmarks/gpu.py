"""The GPU path measured in one command, sized to end within its budget (default 420 s) on one GPU.

    python -m benchmarks.gpu [--out benchmarks/results/gpu.json] [--budget-s 420] [--dry-run]
                             [--data ../shared/data/ffhq-stylegan-2200] [--only SECTION ...]

Sections, in this order, each under its own time limit (its share of what is left of --budget-s), each written to
the JSON as it finishes (temp file + rename: a killed run keeps what it measured):

  environment    GPUs (name, memory, compute capability), driver (NVML), CUDA and torch versions, bf16 support and
                 the precision `train.precision=auto` picks, CPU cores.
  fold_training  the fold loop (`raydf.training.fold_loop.train_fold`, in this process) on the shared data set at the
                 seed's 256 -> 156 px, batch 64, for InceptionResnetV1 and efficientnet_b0: epoch images/s, the GPU's
                 busy fraction and memory (NVML, sampled every 0.1 s in a thread) and the CPUs' busy fraction
                 (/proc/stat) over the epochs after the first, and the same DataLoader alone (its workers, augmentation
                 and the copy to the GPU, no network): what the input pipeline can feed. `network_only`: train steps
                 of the network on random uint8 batches in bf16 + channels-last against fp32 and against
                 contiguous memory. `shared_gpu`: K fold tasks (`raydf.distributed.folds.run_folds`, the fold tasks
                 of `raydf.train`) on one GPU with `resources.gpus_per_fold=1/K`, K = 1 (a fold alone), 2 and 4:
                 total images/s against the fold alone, and what limits each (`limit`: gpu, data loading, cpu, or
                 overhead, with the figures that decided it).
  compile        the fold loop with `train.compile` off and on: images/s after the first epoch, and the compile
                 seconds (the first epoch's extra time with compile on, over the same with it off).
  faces          `raydf.pipelines.faces.extract_faces` (what `python -m raydf.faces` runs) on videos and uncropped
                 photos made from the data set's faces (`raydf.data.demo_media`), MTCNN with one actor per GPU
                 (`faces.gpus_per_actor=1`) against one single-threaded actor per CPU core (`=0`), in the same run:
                 faces/s, frames/s and `sources_per_device` from extraction.json.
  end_to_end     `raydf.pipelines.training.train` (what `python -m raydf.train` runs) with configs/seed.yaml, K folds
                 sharing the GPU, a few epochs, on a train/test split: the wall time split as summary.json reports it.
  inference      on that run: the soft vote (`raydf.pipelines.training.predict_paths`, what `raydf.predict` runs: a Ray
                 Data actor pool, one actor per GPU) in images/s on N/2 and N images (the difference is the rate once
                 the pool has started); and `raydf.pipelines.serving.serve_run` (what `python -m raydf.serve` runs) on
                 loopback with 16 concurrent clients (`benchmarks.serve_load.load`): requests/s, p50/p99, replicas.

The end-to-end run comes before inference because inference measures that finished run, as a user predicts with
and serves a run they trained. All sections share one Ray instance (started here, with the machine's CPUs and GPUs).

`--dry-run` (automatic without CUDA) runs every section's code path on tiny inputs on the CPU, with one logical GPU
declared to Ray (so the fractional-GPU and one-actor-per-GPU paths run), timm's 0.1 M-parameter `test_efficientnet`
for the backbones and `backend="eager"` for torch.compile (dynamo traces, no kernels are generated): same JSON shape,
`"device": "cpu"`. Its figures check the script, not a machine. Each section's `status` is `ok`, `cut` (its time
limit ran out; what it measured before is kept), `failed` (with the error), or `not run`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ffhq-stylegan-2200"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu.json"

# Each section's share of the budget; a section gets its share of what is left when it starts, so time one section
# did not use goes to the later ones.
SECTIONS = {
    "environment": 0.02,
    "fold_training": 0.28,
    "compile": 0.20,
    "faces": 0.10,
    "end_to_end": 0.20,
    "inference": 0.20,
}
GRACE_S = 20.0  # after a section's limit: the cooperative stop first, then SIGALRM interrupts it
WATCHDOG_S = 90.0  # past the budget: the JSON is written as it stands and the process exits


@dataclass(frozen=True)
class Sizes:
    """How much each section does: the GPU run's sizes and the dry run's tiny ones."""

    n_images: int  # images of the data set used (a train/test split of them for end_to_end)
    resize: int
    crop: int
    batch: int
    eval_batch: int
    epochs: int  # per fold measurement; the first is warm-up (cuDNN autotuning, allocator, loader start)
    backbones: tuple[str, ...]
    shared_k: tuple[int, ...]  # folds sharing one GPU; 1 = a fold alone, the baseline
    net_steps: int  # timed train steps per variant in network_only
    compile_epochs: int
    videos: int
    video_frames: int
    video_size: tuple[int, int]
    frames_per_video: int
    photos: int
    e2e_folds: int
    e2e_epochs: int
    vote_images: int
    serve_clients: int
    serve_seconds: float


GPU_SIZES = Sizes(
    n_images=2200,
    resize=256,
    crop=156,
    batch=64,
    eval_batch=128,
    epochs=3,
    backbones=("inception_resnet_v1", "efficientnet_b0"),
    shared_k=(1, 2, 4),
    net_steps=20,
    compile_epochs=3,
    videos=8,
    video_frames=96,
    video_size=(1280, 720),
    frames_per_video=32,
    photos=16,
    e2e_folds=4,
    e2e_epochs=3,
    vote_images=4400,
    serve_clients=16,
    serve_seconds=20.0,
)
DRY_SIZES = Sizes(
    n_images=40,
    resize=96,
    crop=80,
    batch=8,
    eval_batch=16,
    epochs=2,
    backbones=("test_efficientnet",),
    shared_k=(1, 2),
    net_steps=2,
    compile_epochs=2,
    videos=2,
    video_frames=6,
    video_size=(320, 240),
    frames_per_video=2,
    photos=2,
    e2e_folds=2,
    e2e_epochs=1,
    vote_images=16,
    serve_clients=16,
    serve_seconds=2.0,
)

log = logging.getLogger("benchmarks.gpu")


class SectionTimeout(KeyboardInterrupt):
    """A section's time limit: raised by SIGALRM in the main thread. A KeyboardInterrupt, so raydf stops as it does on
    Ctrl-C (fold tasks cancelled, Ray Data and Serve left cleanly)."""


# ---------------------------------------------------------------------------------------------------------------
# Sampling the GPU (NVML) and the CPUs (/proc/stat) in a background thread


class Monitor:
    """Samples every `interval` s: each GPU's busy percentage (NVML: the share of the last sample period in which a
    kernel ran) and used memory, and the share of the machine's CPU time that was not idle."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.samples: list[tuple[float, list[float], list[float], Optional[float]]] = []
        self.nvml_error: Optional[str] = None
        self.handles: list = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception as e:  # no package, no driver (a CPU machine), no permission
            self.nvml_error = f"{type(e).__name__}: {e}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.handles:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()

    def _run(self) -> None:
        last = _cpu_times()
        while not self._stop.wait(self.interval):
            busy, mem = [], []
            for h in self.handles:
                try:
                    busy.append(float(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu))
                    mem.append(self._nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20)
                except Exception:  # a transient NVML error: skip the sample
                    busy, mem = [], []
                    break
            now = _cpu_times()
            cpu = None
            if last and now and now[1] > last[1]:
                cpu = 1 - (now[0] - last[0]) / (now[1] - last[1])
            last = now
            self.samples.append((time.time(), busy, mem, cpu))

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Means and peaks of the samples whose period (from the sample before to this one) overlaps t0..t1 (unix
        seconds): a window shorter than the interval (a dry run's 40-image epoch) still gets the sample that covers
        it, which may be the next one (waited for, at most a few intervals)."""
        deadline = time.time() + 3 * self.interval
        while self._thread.is_alive() and not (self.samples and self.samples[-1][0] >= t1) and time.time() < deadline:
            time.sleep(self.interval / 4)
        samples = list(self.samples)
        periods = zip([None, *samples[:-1]], samples)
        inside = [s for prev, s in periods if s[0] >= t0 and (prev is None or prev[0] <= t1)]
        gpu = [s for s in inside if s[1]]
        cpu = [s[3] for s in inside if s[3] is not None]
        return {
            "gpu_busy_fraction": round(statistics.fmean(np.mean(s[1]) for s in gpu) / 100, 3) if gpu else None,
            "gpu_memory_used_mb_max": round(max(max(s[2]) for s in gpu), 1) if gpu else None,
            "cpu_busy_fraction": round(statistics.fmean(cpu), 3) if cpu else None,
            "samples": len(inside),
            "window_s": round(t1 - t0, 2),
        }


def _cpu_times() -> Optional[tuple[float, float]]:
    """(idle, total) jiffies of all CPUs from /proc/stat (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return fields[3] + fields[4], sum(fields)  # idle + iowait; user..steal


# ---------------------------------------------------------------------------------------------------------------
# The run: sizes, data, the shared Ray instance, the JSON


class Bench:
    """What the sections share: sizes, the data, the Ray instance, the monitor, the report and its file."""

    def __init__(self, args: argparse.Namespace, dry: bool, work: Path):
        self.args, self.dry, self.work = args, dry, work
        self.sizes = DRY_SIZES if dry else GPU_SIZES
        self.device = torch.device("cpu" if dry else "cuda")
        self.start = time.time()
        self.deadline = self.start + args.budget_s
        self.section_deadline = self.deadline
        self.monitor = Monitor().start()
        self.report: dict[str, Any] = {
            "device": self.device.type,
            "dry_run": dry,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join(["python -m benchmarks.gpu", *sys.argv[1:]]),
            "budget_s": args.budget_s,
            "sizes": asdict(self.sizes),
            "nvml": "ok" if self.monitor.nvml_error is None else f"unavailable: {self.monitor.nvml_error}",
            "sections": {name: {"status": "not run"} for name in SECTIONS},
        }
        self._lock = threading.Lock()
        self._images: Optional[tuple[np.ndarray, np.ndarray, list[str]]] = None
        self._split: Optional[tuple[Path, Path]] = None
        self.run_dir: Optional[str] = None

    # -- the JSON ---------------------------------------------------------------------------------------------

    def save(self) -> None:
        """Write the report atomically: a temp file beside it, then a rename."""
        with self._lock:
            self.report["wall_s"] = round(time.time() - self.start, 1)
            sections = self.report["sections"]
            self.report["cut_sections"] = [n for n, s in sections.items() if s.get("status") == "cut"]
            self.report["failed_sections"] = [n for n, s in sections.items() if s.get("status") == "failed"]
            out = Path(self.args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(self.report, f, indent=2, default=_jsonable)
                f.write("\n")
            os.replace(tmp, out)

    # -- time limits ------------------------------------------------------------------------------------------

    def should_stop(self) -> bool:
        """The cooperative stop the fold loop asks before every batch."""
        return time.time() > self.section_deadline

    def time_left(self) -> float:
        return self.section_deadline - time.time()

    # -- data -------------------------------------------------------------------------------------------------

    def data_split(self) -> tuple[Path, Path]:
        """(train, test) of n_images: CSVs of a fixed 80/20 split of the shared set, or the built-in demo set."""
        if self._split is None:
            data = Path(self.args.data)
            if (data / "labels.csv").is_file():
                from benchmarks.run import split_data

                self._split = split_data(data, self.work, self.sizes.n_images)
                self.report["data"] = f"{data.name}: {self.sizes.n_images} images, 80/20 train/test"
            else:
                from raydf.data.demo import ensure_demo

                n_test = self.sizes.n_images // 5
                demo = ensure_demo(self.work / "demo", n_train=self.sizes.n_images - n_test, n_test=n_test, size=256)
                self._split = (Path(demo.train), Path(demo.test))
                self.report["data"] = f"built-in demo set (no {data}): {self.sizes.n_images} images"
        return self._split

    def train_images(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The training split decoded once at data.resize (raydf's decoded cache), its labels and paths."""
        if self._images is None:
            from raydf.data.cache import DecodedCache
            from raydf.data.catalog import read_train

            table = read_train(str(self.data_split()[0]))
            paths = table["path"].astype(str).tolist()
            images = DecodedCache.for_images(paths, self.sizes.resize, str(self.work / "cache")).load()
            self._images = (np.ascontiguousarray(images), table["label"].to_numpy(np.int64), paths)
        return self._images

    def fold_config(self, model: str, extra: tuple[str, ...] = ()):
        """configs/seed.yaml (256 -> 156 px, batch 64, 4 CPUs and 4 loader workers per fold) at this run's sizes."""
        from raydf.config import load_config

        s = self.sizes
        cpus = max(1, min(4, (os.cpu_count() or 1) // max(s.shared_k)))
        overrides = [
            f"model.name={model}",
            f"data.resize={s.resize}",
            f"data.crop={s.crop}",
            f"train.batch_size={s.batch}",
            f"train.eval_batch_size={s.eval_batch}",
            f"train.epochs={s.epochs}",
            f"sched.t_max={s.epochs}",
            f"resources.cpus_per_fold={cpus}",
            f"resources.loader_workers={cpus if not self.dry else 0}",
            f"data.cache_dir={self.work / 'cache'}",
        ]
        return load_config("seed", overrides + list(extra))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _precision_name(dtype: Optional[torch.dtype]) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


# ---------------------------------------------------------------------------------------------------------------
# 1. Environment


def section_environment(b: Bench, out: dict) -> None:
    from raydf.training.engine import Precision, cpu_has_native_bf16, cuda_has_native_bf16

    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out["cpu_cores"] = os.cpu_count()
    out["cpu_cores_usable"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out["cpu"] = _cpu_name()
    out["python"] = platform.python_version()
    import ray

    out["ray"] = ray.__version__
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            dev = torch.device("cuda", i)
            gpus.append(
                {
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "compute_capability": f"{p.major}.{p.minor}",
                    "multiprocessors": p.multi_processor_count,
                    "bf16_native": cuda_has_native_bf16(dev),
                }
            )
    out["gpus"] = gpus
    out["driver"] = _nvml_driver()
    out["nvml"] = b.report["nvml"]
    out["bf16"] = gpus[0]["bf16_native"] if gpus else cpu_has_native_bf16()
    out["precision_auto"] = _precision_name(Precision.resolve("auto", b.device).dtype)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _nvml_driver() -> Optional[str]:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else version
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:
        return f"unavailable: {type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------------------------
# 2. Fold training


def _split_rows(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One fold's rows of a 4-fold split (the seed's K): 3/4 train, 1/4 validation, interleaved."""
    rows = np.arange(len(labels))
    return rows[rows % 4 != 0], rows[rows % 4 == 0]


def _epoch_images(cfg, n_train: int, n_val: int) -> int:
    """Images one epoch of the fold loop touches: the full training batches (the last partial one is dropped) and
    every validation image."""
    return (n_train // cfg.train.batch_size) * cfg.train.batch_size + n_val


def fold_in_process(b: Bench, cfg, images, labels, train_idx, val_idx, result: dict) -> dict:
    """`train_fold` in this process; rates and samples of the epochs after the first, into `result` (filled also when
    the section's time limit interrupts it: the epochs done by then, and how long it ran)."""
    from raydf.training.engine import Precision, StopRequested
    from raydf.training.fold_loop import train_fold

    rows: list[dict] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.resources.cpus_per_fold)  # as a fold task does
    result["precision"] = _precision_name(Precision.resolve(cfg.train.precision, b.device).dtype)
    result["loader_workers"] = cfg.resources.loader_workers
    if b.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    try:
        outcome = train_fold(
            images,
            labels,
            train_idx,
            val_idx,
            cfg,
            0,
            on_epoch=lambda row: rows.append(dict(row, end=time.time())),
            device=b.device,
            should_stop=b.should_stop,
        )
        result["device"] = outcome.device
    except StopRequested:
        result["cut_after_epochs"] = len(rows)
    except KeyboardInterrupt:  # the hard stop (e.g. inside torch.compile's first step): say how far it got
        result["cut_after_epochs"] = len(rows)
        raise
    finally:
        torch.set_num_threads(threads)
        result["seconds_run"] = round(time.time() - t0, 1)
        result.update(_epoch_rates(rows, _epoch_images(cfg, len(train_idx), len(val_idx))))
        if b.device.type == "cuda":
            result["torch_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            torch.cuda.empty_cache()  # the fold tasks that follow share this GPU
        steady = rows[1:] or rows
        if steady:
            result.update(b.monitor.window(steady[0]["end"] - steady[0]["seconds"], steady[-1]["end"]))
    return result


def _epoch_rates(rows: list[dict], epoch_images: int) -> dict:
    steady = rows[1:] or rows
    return {
        "epoch_images": epoch_images,
        "epoch_seconds": [round(r["seconds"], 3) for r in rows],
        "images_per_s": round(epoch_images * len(steady) / sum(r["seconds"] for r in steady), 1) if steady else None,
    }


def loader_alone(b: Bench, cfg, images, labels, train_idx, val_idx) -> dict:
    """One epoch of the fold's training DataLoader with nothing else: its workers, the augmentation, collation and
    the copy to the device (pinned on CUDA), timed from the first batch on (worker start-up left out)."""
    from raydf.data.dataset import make_loader
    from raydf.data.transforms import FastTrainTransform, train_transform
    from raydf.training.engine import to_input
    from raydf.training.fold_loop import fold_datasets

    # As `train_fold` builds it (its loader settings; the same workers rule).
    workers = cfg.resources.loader_workers
    if workers is None:
        workers = max(1, cfg.resources.cpus_per_fold - 1) if b.device.type == "cuda" else 0
    tf = FastTrainTransform(cfg.data.crop) if cfg.train.fast_augment else train_transform(cfg.data.crop)
    train_set, _ = fold_datasets(images, labels, train_idx, val_idx, cfg, tf, cfg.train.seed)
    loader = make_loader(
        train_set, cfg.train.batch_size, train=True, workers=workers, seed=0, pin_memory=b.device.type == "cuda"
    )
    train_set.set_epoch(1)
    n, t0 = 0, None
    for batch, _ in loader:
        x = to_input(batch, b.device)
        if t0 is None:
            if b.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            continue
        n += len(x)
        if b.should_stop():
            break
    if b.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = max(time.perf_counter() - (t0 or time.perf_counter()), 1e-9)
    del loader  # its persistent workers
    return {"workers": workers, "images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1)}


def network_only(b: Bench, model_name: str) -> dict:
    """Train steps of the network alone (random uint8 batches already on the device, raydf's `to_input`, the fold
    loop's optimizer): autocast (bf16 where `train.precision=auto` picks it) + channels-last, what the fold loop does,
    against fp32 and against contiguous memory."""
    from raydf.training.engine import Precision

    auto = Precision.resolve("auto", b.device)
    variants = {"raydf": (auto, True), "fp32": (Precision(None), True), "contiguous": (auto, False)}
    out: dict[str, Any] = {"model": model_name, "batch": b.sizes.batch, "crop": b.sizes.crop}
    out["precision_auto"] = _precision_name(auto.dtype)
    for name, (precision, channels_last) in variants.items():
        out[f"{name}_images_per_s"] = _train_steps(b, model_name, precision, channels_last)
        if b.device.type == "cuda":
            torch.cuda.empty_cache()
        if b.should_stop():
            break
    if "fp32_images_per_s" in out:
        out["autocast_over_fp32"] = round(out["raydf_images_per_s"] / out["fp32_images_per_s"], 2)
    if "contiguous_images_per_s" in out:
        out["channels_last_over_contiguous"] = round(out["raydf_images_per_s"] / out["contiguous_images_per_s"], 2)
    return out


def _train_steps(b: Bench, model_name: str, precision, channels_last: bool) -> float:
    """Images/s of `net_steps` timed train steps, after 3 untimed ones (cuDNN's algorithm search, the allocator)."""
    import torch.nn.functional as F

    from raydf.models.factory import build_model
    from raydf.training.engine import to_input
    from raydf.training.fold_loop import make_optimizer

    s = b.sizes
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (s.batch, s.crop, s.crop, 3), dtype=torch.uint8, device=b.device)
    labels = torch.randint(0, 2, (s.batch,), device=b.device)
    model = build_model(0.6, model_name).to(b.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, b.fold_config(model_name))
    scaler = precision.scaler(b.device)
    model.train()
    for i in range(3 + s.net_steps):
        if i == 3:
            _sync(b)
            t0 = time.perf_counter()
        x = to_input(batch, b.device)
        x = x if channels_last else x.contiguous()
        with precision.autocast(b.device):
            loss = F.cross_entropy(model(x).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    _sync(b)
    return round(s.batch * s.net_steps / (time.perf_counter() - t0), 1)


def _sync(b: Bench) -> None:
    if b.device.type == "cuda":
        torch.cuda.synchronize()


def loader_share(epoch_seconds: list[float], train_images: int, feed: Optional[float]) -> Optional[float]:
    """The share of a steady epoch's time (epochs after the first, their mean) that the DataLoader alone, at `feed`
    images/s, needs to deliver the epoch's `train_images`; near 1, the GPU waits for batches."""
    steady = epoch_seconds[1:] or epoch_seconds
    if not feed or not steady:
        return None
    return round(train_images / feed / statistics.fmean(steady), 3)


def limit_of(gpu_busy: Optional[float], cpu_busy: Optional[float], share: Optional[float]) -> dict:
    """What limits a training rate, and the figures that say so.

    gpu: the GPU was busy (a kernel running) >= 85% of the time. data loading: the DataLoader alone needs >= 80% of
    the epoch's time for its training batches (`loader_share`), so the GPU waits for them. cpu: the machine's CPUs
    were >= 85% busy (the loaders and the fold processes compete for cores). Otherwise neither is saturated: the time
    goes to per-step overhead (kernel launches, Python, synchronisation: the fold loop reads the loss every batch)."""
    figures = {"gpu_busy_fraction": gpu_busy, "cpu_busy_fraction": cpu_busy, "loader_share": share}
    if gpu_busy is not None and gpu_busy >= 0.85:
        limit = "gpu"
    elif share is not None and share >= 0.8:
        limit = "data loading"
    elif cpu_busy is not None and cpu_busy >= 0.85:
        limit = "cpu"
    else:
        limit = "overhead"
    return {"limit": limit, "figures": figures}


def shared_gpu(b: Bench, k: int, images_ref, labels_ref, train_idx, val_idx, alone_feed: Optional[float]) -> dict:
    """K fold tasks at once through `run_folds`, each asking for 1/K GPU (as `resources.gpus_per_fold=1/K`)."""
    from raydf.distributed.folds import run_folds
    from raydf.distributed.session import fold_resources

    model = b.sizes.backbones[0]
    cfg = b.fold_config(model, (f"resources.gpus_per_fold={1 / k}", f"train.folds={max(k, 2)}"))
    resources = fold_resources(cfg)
    t0 = time.time()
    # No progress actor (on_events): one process fewer; the epochs' times come from each fold's history.
    results = run_folds(images_ref, labels_ref, {f: (train_idx, val_idx) for f in range(k)}, cfg, resources)
    wall = time.time() - t0
    n = _epoch_images(cfg, len(train_idx), len(val_idx))
    folds, spans = [], []
    for f, (_, info) in sorted(results.items()):
        rates = _epoch_rates(info["history"], n)
        folds.append({"fold": f, "gpu_ids": info.get("gpu_ids"), **rates})
        seconds = [row["seconds"] for row in info["history"]]
        # (end of its first epoch, end of its last): the last ends as the fold task returns, give or take the copy of
        # its best weights.
        spans.append((info["finished_at"] - sum(seconds[1:]), info["finished_at"]))
    # The time all K folds were past their first epoch and still training: their steady state side by side.
    start, stop = max(a for a, _ in spans), min(z for _, z in spans)
    if stop <= start:
        start, stop = t0, time.time()
    total = sum(f["images_per_s"] or 0 for f in folds)
    window = b.monitor.window(start, stop)
    # Each fold has its own loader workers: the share each fold's loader needs of that fold's epochs.
    train_images = (len(train_idx) // cfg.train.batch_size) * cfg.train.batch_size
    shares = [loader_share(f["epoch_seconds"], train_images, alone_feed) for f in folds]
    share = max(shares) if None not in shares and shares else None
    entry = {
        "k": k,
        "gpus_per_fold": resources["num_gpus"],
        "cpus_per_fold": resources["num_cpus"],
        "model": model,
        "wall_s": round(wall, 1),
        "folds": folds,
        "total_images_per_s": round(total, 1),
        **window,
        "limit": limit_of(window["gpu_busy_fraction"], window["cpu_busy_fraction"], share),
    }
    return entry


def section_fold_training(b: Bench, out: dict) -> None:
    import ray

    images, labels, _ = b.train_images()
    train_idx, val_idx = _split_rows(labels)
    s = b.sizes
    out["set"] = {
        "train": len(train_idx),
        "val": len(val_idx),
        "resize": s.resize,
        "crop": s.crop,
        "batch": s.batch,
        "data": b.report.get("data"),
    }
    out["per_backbone"] = per = []
    for name in s.backbones:
        cfg = b.fold_config(name)
        entry: dict[str, Any] = {"model": name}
        per.append(entry)
        fold_in_process(b, cfg, images, labels, train_idx, val_idx, entry)
        b.save()
        if b.should_stop():
            return
        entry["loader_alone"] = loader_alone(b, cfg, images, labels, train_idx, val_idx)
        train_images = (len(train_idx) // cfg.train.batch_size) * cfg.train.batch_size
        share = loader_share(entry["epoch_seconds"], train_images, entry["loader_alone"]["images_per_s"])
        entry["limit"] = limit_of(entry.get("gpu_busy_fraction"), entry.get("cpu_busy_fraction"), share)
        b.save()
    out["network_only"] = network_only(b, s.backbones[0])
    b.save()
    out["shared_gpu"] = shared = []
    images_ref, labels_ref = ray.put(images), ray.put(labels)
    feed = per[0].get("loader_alone", {}).get("images_per_s") if per else None
    for k in s.shared_k:
        if b.should_stop():
            return
        shared.append(shared_gpu(b, k, images_ref, labels_ref, train_idx, val_idx, feed))
        alone = shared[0]["total_images_per_s"]
        shared[-1]["over_one_fold_alone"] = round(shared[-1]["total_images_per_s"] / alone, 2) if alone else None
        b.save()


# ---------------------------------------------------------------------------------------------------------------
# 3. torch.compile


def section_compile(b: Bench, out: dict) -> None:
    images, labels, _ = b.train_images()
    train_idx, val_idx = _split_rows(labels)
    model = b.sizes.backbones[0]
    epochs = b.sizes.compile_epochs
    out["model"] = model
    if b.dry:
        out["backend"] = "eager (dry run: dynamo traces the loop, no kernels are generated)"
    runs = {}
    for on in (False, True):
        cfg = b.fold_config(model, (f"train.compile={str(on).lower()}", f"train.epochs={epochs}"))
        runs[on] = out["on" if on else "off"] = {}
        with _dry_compile_backend(b.dry):
            fold_in_process(b, cfg, images, labels, train_idx, val_idx, runs[on])
        b.save()
        if b.should_stop():
            return
    off, on = runs[False], runs[True]
    if len(off["epoch_seconds"]) > 1 and len(on["epoch_seconds"]) > 1:
        extra_first = lambda r: r["epoch_seconds"][0] - statistics.fmean(r["epoch_seconds"][1:])  # noqa: E731
        out["compile_seconds"] = round(extra_first(on) - extra_first(off), 1)
    if off["images_per_s"] and on["images_per_s"]:
        out["on_over_off"] = round(on["images_per_s"] / off["images_per_s"], 2)


@contextlib.contextmanager
def _dry_compile_backend(dry: bool):
    """In the dry run, `torch.compile` with the eager backend: inductor would compile C++ for minutes on 2 cores."""
    if not dry:
        yield
        return
    original = torch.compile
    torch.compile = lambda model=None, **kw: original(model, **{**kw, "backend": "eager"})
    try:
        yield
    finally:
        torch.compile = original


# ---------------------------------------------------------------------------------------------------------------
# 4. Face extraction


def make_media(b: Bench, folder: Path) -> Path:
    """real/ and fake/ with videos (a face drifting over a background) and uncropped photos, made from the data
    set's faces (`raydf.data.demo_media`, the faces tests' and benchmarks' generator)."""
    from raydf.data.catalog import read_train
    from raydf.data.demo_media import load_faces, write_photo, write_video

    s = b.sizes
    table = read_train(str(b.data_split()[0]))
    n = max(s.videos, s.photos)
    width, height = s.video_size
    for label, name in ((0, "real"), (1, "fake")):
        paths = table.loc[table["label"] == label, "path"].astype(str).tolist()[:n]
        faces = load_faces(paths)
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(s.videos // 2):
            write_video(
                folder / name / f"video{i}.mp4",
                [faces[i % len(faces)]],
                s.video_frames,
                width=width,
                height=height,
                face_px=height * 3 // 10,
                seed=i,
            )
        for i in range(s.photos // 2):
            write_photo(folder / name / f"photo{i}.jpg", faces[(i + 1) % len(faces)], seed=100 + i)
    return folder


def section_faces(b: Bench, out: dict) -> None:
    import ray

    from raydf.config import load_config
    from raydf.pipelines.faces import extract_faces

    s = b.sizes
    src = make_media(b, b.work / "media")
    out["sources"] = {"videos": s.videos, "frames_per_video": s.video_frames, "photos": s.photos}
    out["video_size"] = list(s.video_size)
    gpus = ray.cluster_resources().get("GPU", 0)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    for name, gpus_per_actor in (("cuda", 1), ("cpu", 0)):
        if b.should_stop():
            return
        cfg = load_config(
            None,
            [
                f"faces.gpus_per_actor={gpus_per_actor}",
                f"faces.frames_per_video={s.frames_per_video}",
                f"data.resize={s.resize}",
                f"data.cache_dir={b.work / 'cache'}",
                *(["faces.actors=1"] if b.dry else []),  # dry run: one actor process, not one per core
            ],
        )
        t0 = time.time()
        stats = extract_faces(cfg, str(src), str(b.work / f"faces-{name}")).stats
        t1 = time.time()
        out[name] = {
            "gpus_per_actor": gpus_per_actor,
            "actors": 1 if b.dry else min(int(gpus) if gpus_per_actor else cpus, s.videos + s.photos),
            "faces": stats["faces"],
            "frames_used": stats["frames_used"],
            "frames_grabbed": stats["frames_grabbed"],
            "seconds": stats["seconds"],
            "faces_per_s": round(stats["faces"] / stats["seconds"], 2),
            "frames_per_s": round(stats["frames_used"] / stats["seconds"], 2),
            "sources_per_device": stats["sources_per_device"],
            **b.monitor.window(t0, t1),
        }
        b.save()
    if "cuda" in out and "cpu" in out:
        out["cuda_over_cpu_faces_per_s"] = round(out["cuda"]["faces_per_s"] / out["cpu"]["faces_per_s"], 2)


# ---------------------------------------------------------------------------------------------------------------
# 5. End to end


def section_end_to_end(b: Bench, out: dict) -> None:
    import ray

    from raydf.config import load_config
    from raydf.pipelines.training import train

    s = b.sizes
    train_spec, test_spec = b.data_split()
    k = s.e2e_folds
    gpus = ray.cluster_resources().get("GPU", 0)
    cpus = max(1, min(4, (os.cpu_count() or 1) // k))
    overrides = [
        f"data.train={train_spec}",
        f"data.test={test_spec}",
        f"run_dir={b.work / 'e2e-run'}",
        f"train.folds={k}",
        f"train.epochs={s.e2e_epochs}",
        f"sched.t_max={s.e2e_epochs}",
        # All K folds at once: one GPU each where there are K, else K sharing what there is.
        f"resources.gpus_per_fold={1 if gpus >= k else max(gpus, 1) / k}",
        f"resources.cpus_per_fold={cpus}",
        f"resources.loader_workers={cpus if not b.dry else 0}",
        f"data.cache_dir={b.work / 'cache'}",
    ]
    if b.dry:
        overrides += [
            f"model.name={s.backbones[0]}",
            f"data.resize={s.resize}",
            f"data.crop={s.crop}",
            f"train.batch_size={s.batch}",
            f"train.eval_batch_size={s.eval_batch}",
            f"predict.batch_size={s.eval_batch}",
            "data.faces=off",  # face crops: the survey would only load MTCNN on 2 cores
            "predict.explain=0",
        ]
    out["config"] = "seed"
    out["overrides"] = [
        o for o in overrides if not o.startswith(("data.train=", "data.test=", "run_dir=", "data.cache"))
    ]
    cfg = load_config("seed", overrides)
    t0 = time.time()
    run_dir = train(cfg)
    out["wall_s"] = round(time.time() - t0, 1)
    b.run_dir = run_dir
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    timings = summary.get("timings", {})
    parts = ("preflight_seconds", "share_images_seconds", "folds_seconds", "inference_seconds")
    split = {p.removesuffix("_seconds"): round(timings[p], 1) for p in parts if p in timings}
    split["rest"] = round(summary["wall_seconds"] - sum(timings.get(p, 0) for p in parts), 1)
    folds = summary["folds"]
    out.update(
        {
            "summary_wall_seconds": round(summary["wall_seconds"], 1),
            # After summary.json's clock stopped: report.md and its plots, leaving the run.
            "after_summary_s": round(out["wall_s"] - summary["wall_seconds"], 1),
            "split": split,
            "timings": timings,
            "folds": [{key: f.get(key) for key in ("fold", "epochs_run", "started_at", "finished_at")} for f in folds],
            # Whether the K folds overlapped in time (they should: all K fit on the GPU at 1/K each).
            "folds_concurrent": max(f["started_at"] for f in folds) < min(f["finished_at"] for f in folds),
            "cv": summary.get("cv"),
            "test": summary.get("test"),
            **b.monitor.window(t0, time.time()),
        }
    )


# ---------------------------------------------------------------------------------------------------------------
# 6. Inference: the soft vote and raydf.serve on the end-to-end run


def section_inference(b: Bench, out: dict) -> None:
    if b.run_dir is None:
        raise RuntimeError("no finished run to predict with: end_to_end did not finish")
    out["soft_vote"] = soft_vote(b)
    b.save()
    if b.should_stop():
        return
    out["serve"] = serve(b)


def soft_vote(b: Bench) -> dict:
    import ray

    from raydf.data.catalog import read_test
    from raydf.pipelines.prediction import load_finished_run
    from raydf.pipelines.training import predict_paths

    cfg, checkpoints = load_finished_run(b.run_dir)
    refs = [ray.put({k: v.numpy() for k, v in weights.items()}) for weights, _ in checkpoints]
    test = read_test(str(b.data_split()[1]))["path"].astype(str).tolist()
    n = b.sizes.vote_images
    paths = (test * (n // len(test) + 1))[:n]
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0  # as raydf.predict decides
    out: dict[str, Any] = {
        "folds": len(refs),
        "model": cfg.model.name,
        "gpus_per_actor": gpus,
        "actors": int(ray.cluster_resources().get("GPU", 0) // gpus) if gpus else None,
        "batch_size": cfg.predict.batch_size,
        "passes": [],
    }
    # The actor pool starts anew in each pass; the difference of the two is the rate once started (the dry run makes
    # one pass: every actor pool is a process start on 2 cores).
    for count in (n,) if b.dry else (n // 2, n):
        t0 = time.time()
        pred = predict_paths(cfg, paths[:count], refs, gpus)
        t1 = time.time()
        assert len(pred) == count and pred["prob_fake"].between(0, 1).all()
        out["passes"].append(
            {"images": count, "seconds": round(t1 - t0, 2), "images_per_s": round(count / (t1 - t0), 1)}
        )
        out["passes"][-1].update(b.monitor.window(t0, t1))
        if b.should_stop():
            break
    out["images_per_s_once_started"] = out["pool_start_s"] = None
    if len(out["passes"]) == 2:
        a, c = out["passes"]
        rate = (c["images"] - a["images"]) / max(c["seconds"] - a["seconds"], 1e-3)
        out["images_per_s_once_started"] = round(rate, 1)
        out["pool_start_s"] = round(a["seconds"] - a["images"] / rate, 2)
    return out


def serve(b: Bench) -> dict:
    """`serve_run` (what `python -m raydf.serve` runs) in a thread of this process, on the shared Ray instance, then
    `serve_load.load`'s clients against it; Serve is shut down after."""
    import requests
    from ray import serve as ray_serve

    from benchmarks.serve_load import free_port, load
    from raydf.data.catalog import read_test
    from raydf.distributed.serving import APP_NAME
    from raydf.pipelines.serving import serve_run

    s = b.sizes
    port = free_port()
    ready, failed = threading.Event(), []

    def run() -> None:
        try:
            overrides = [f"serve.max_batch_size={s.serve_clients}"]
            serve_run(b.run_dir, overrides, "127.0.0.1", port, on_ready=lambda url: ready.set())
        except BaseException as e:  # reported by the main thread
            failed.append(f"{type(e).__name__}: {e}")
            ready.set()

    t_start = time.time()
    threading.Thread(target=run, name="raydf-serve", daemon=True).start()  # serve_run serves until the process ends
    try:
        while not ready.wait(0.5):
            if b.should_stop():
                raise SectionTimeout()
        if failed:
            raise RuntimeError(f"raydf.serve did not start: {failed[0]}")
        start_s = time.time() - t_start
        url = f"http://127.0.0.1:{port}"
        paths = read_test(str(b.data_split()[1]))["path"].astype(str).tolist()[:64]
        images = [(Path(p).name, Path(p).read_bytes()) for p in paths]
        for name, data in images[:8]:  # warm-up: the replica's first batches
            requests.post(f"{url}/predict", files={"file": (name, data)}, timeout=120).raise_for_status()
        t0 = time.time()
        result = load(url, images, s.serve_clients, s.serve_seconds, bad_every=0)
        t1 = time.time()
        status = ray_serve.status().applications[APP_NAME].deployments["EnsembleServer"]
        return {
            "clients": s.serve_clients,
            "seconds": s.serve_seconds,
            "max_batch_size": s.serve_clients,
            "start_s": round(start_s, 1),
            "replicas": dict(status.replica_states),
            **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()},
            **b.monitor.window(t0, t1),
        }
    finally:
        with contextlib.suppress(Exception):
            ray_serve.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# Running the sections


SECTION_FUNCTIONS: dict[str, Callable[[Bench, dict], None]] = {
    "environment": section_environment,
    "fold_training": section_fold_training,
    "compile": section_compile,
    "faces": section_faces,
    "end_to_end": section_end_to_end,
    "inference": section_inference,
}


def _on_alarm(signum, frame) -> None:
    raise SectionTimeout()


def run_section(b: Bench, name: str) -> None:
    """Run one section under its time limit: its share of what is left of the budget."""
    from raydf.errors import Interrupted

    left = b.deadline - time.time()
    names = list(SECTIONS)
    share = SECTIONS[name] / sum(SECTIONS[n] for n in names[names.index(name) :])
    limit = max(0.0, left * share)
    out: dict[str, Any] = {"status": "running", "limit_s": round(limit, 1)}
    b.report["sections"][name] = out
    if limit < 0.5:
        out["status"] = "cut"
        out["note"] = "no time left in the budget"
        b.save()
        return
    print(f"[gpu bench] {name}: up to {limit:.0f}s", flush=True)
    b.section_deadline = time.time() + limit
    t0 = time.time()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit + GRACE_S)  # the hard stop, when the cooperative one is not reached
    try:
        SECTION_FUNCTIONS[name](b, out)
        out["status"] = "cut" if time.time() > b.section_deadline else "ok"
    except (SectionTimeout, Interrupted, KeyboardInterrupt) as e:
        if time.time() < b.section_deadline:
            raise  # a real Ctrl-C: stop the whole run
        out["status"] = "cut"
        out["note"] = f"time limit ({type(e).__name__})"
    except Exception as e:
        if time.time() > b.section_deadline:
            out["status"] = "cut"
        else:
            out["status"] = "failed"
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc(limit=-6)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        b.section_deadline = b.deadline
    out["seconds"] = round(time.time() - t0, 1)
    b.save()
    print(f"[gpu bench] {name}: {out['status']} in {out['seconds']}s", flush=True)


def start_ray(dry: bool) -> None:
    """The one Ray instance every section uses: the machine's CPUs and GPUs (dry run: 2 CPUs and a logical GPU)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray's workers import this checkout's raydf and benchmarks, as the driver does.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    kwargs: dict[str, Any] = {"address": "local", "include_dashboard": False, "log_to_driver": False}
    if dry:
        kwargs.update(num_cpus=2, num_gpus=1, object_store_memory=300 * 2**20)
    ray.init(logging_level=logging.WARNING, **kwargs)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", help="the JSON written as sections finish (default results/gpu.json; a dry run: results/gpu-dry.json)"
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for all sections together")
    parser.add_argument("--dry-run", action="store_true", help="tiny inputs on the CPU (automatic without CUDA)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a labelled set with labels.csv (else the demo)")
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    dry = args.dry_run or not torch.cuda.is_available()
    if dry and not args.dry_run:
        print("[gpu bench] no CUDA device: running the CPU dry run (--dry-run)", flush=True)
    if args.out is None:  # a dry run never overwrites a GPU run's figures
        args.out = str(DEFAULT_OUT.with_name("gpu-dry.json") if dry else DEFAULT_OUT)
    with tempfile.TemporaryDirectory(prefix="raydf-gpu-bench-") as tmp:
        os.environ.setdefault("RAYDF_CACHE", str(Path(tmp) / "raydf-cache"))
        b = Bench(args, dry, Path(tmp))
        b.save()

        def watchdog() -> None:  # a section whose cleanup hangs must not take the figures with it
            time.sleep(max(0.0, b.deadline + WATCHDOG_S - time.time()))
            b.report["watchdog"] = f"stopped {WATCHDOG_S:.0f}s past the budget"
            b.save()
            os._exit(3)

        threading.Thread(target=watchdog, name="watchdog", daemon=True).start()
        start_ray(dry)
        b.report["ray_start_s"] = round(time.time() - b.start, 1)
        try:
            for name in SECTIONS:
                if args.only and name not in args.only:
                    continue
                run_section(b, name)
        finally:
            b.monitor.stop()
            b.save()
            import ray

            ray.shutdown()
    sections = b.report["sections"]
    print(json.dumps({n: s.get("status") for n, s in sections.items()}), flush=True)
    print(f"[gpu bench] wrote {args.out} in {b.report['wall_s']}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
