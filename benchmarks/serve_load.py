"""Load on `python -m raydf.serve`: N concurrent clients for T seconds, dynamic batching against one at a time.

    python -m benchmarks.serve_load [--run RUN_DIR] [--clients 16] [--seconds 30] [--bad-every 10]

Without --run, the default config (InceptionResnetV1, 112 -> 80 px) is trained for one epoch on the built-in demo
data into a temporary folder. For each mode (`serve.max_batch_size=16`, then `=1`: every request its own forward
pass) the server is started as a user starts it (a subprocess on loopback, 1 replica with the machine's cores),
warmed up, and then N client threads post face images as fast as they get answers, for T seconds. Every
`bad_every`-th request is a bad upload (a text file): it must get 415 and must not disturb the others. Reports
good requests/s, p50 and p99 latency, failed good requests and the bad uploads' statuses; writes serve_load.json.
Loopback only; bounded in clients and time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared/data/ffhq-stylegan-2200"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_demo_run(root: Path) -> Path:
    run_dir = root / "run"
    cmd = [sys.executable, "-m", "raydf.train", f"run_dir={run_dir}", "train.epochs=1", "sched.t_max=1", "-q"]
    subprocess.run(cmd, check=True, cwd=REPO)
    return run_dir


def face_images(n: int = 64) -> list[tuple[str, bytes]]:
    """Face crops to post: the shared FFHQ/StyleGAN JPEGs (256 px) when present, else the demo's test images."""
    if SHARED.is_dir():
        files = sorted((SHARED / "real").iterdir())[: n // 2] + sorted((SHARED / "fake").iterdir())[: n // 2]
    else:
        from raydf.data.demo import ensure_demo

        files = sorted(Path(ensure_demo(Path(tempfile.mkdtemp()), n_train=8, n_test=n).test).parent.glob("test/*"))
    return [(f.name, f.read_bytes()) for f in files[:n]]


class Server:
    """`python -m raydf.serve` in its own session, stopped with SIGTERM (as a user or systemd stops it)."""

    def __init__(self, run_dir: Path, overrides: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "raydf.serve", "--run", str(run_dir), "--port", str(self.port), *overrides]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        deadline = time.time() + 300
        while not any("raydf: serving" in line for line in self.lines):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the server did not start:\n" + "".join(self.lines[-40:]))
            time.sleep(0.5)

    def stop(self) -> float:
        t0 = time.time()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        return time.time() - t0


def load(url: str, images: list[tuple[str, bytes]], clients: int, seconds: float, bad_every: int) -> dict:
    """`clients` threads, each posting one request after another until `seconds` pass."""
    good_latency: list[float] = []
    failed_good: list[str] = []
    bad_status: list[int] = []
    lock = threading.Lock()
    stop_at = time.time() + seconds

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while time.time() < stop_at:
            i += clients
            bad = bad_every > 0 and i % bad_every == 0
            name, data = ("notes.txt", b"not an image\n" * 20) if bad else images[i % len(images)]
            t0 = time.perf_counter()
            try:
                r = session.post(f"{url}/predict", files={"file": (name, data)}, timeout=120)
                status = r.status_code
                ok = status == 200 and "prob_fake" in r.json()
            except requests.RequestException as e:
                status, ok = -1, False
                name = f"{name}: {e}"
            dt = time.perf_counter() - t0
            with lock:
                if bad:
                    bad_status.append(status)
                elif ok:
                    good_latency.append(dt)
                else:
                    failed_good.append(f"{name}: HTTP {status}")

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    lat = np.array(good_latency) * 1000
    return {
        "good_requests": len(good_latency),
        "requests_per_s": len(good_latency) / wall,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "failed_good_requests": len(failed_good),
        "failed_examples": failed_good[:5],
        "bad_uploads": len(bad_status),
        "bad_upload_statuses": sorted(set(bad_status)),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished run (default: train the demo for one epoch)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--bad-every", type=int, default=10, help="every k-th request is a bad upload (0: none)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="serve.* settings for both modes")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or train_demo_run(Path(tmp))
        images = face_images()
        modes = {
            "batched (serve.max_batch_size=16)": [*args.set, "serve.max_batch_size=16"],
            "one at a time (=1)": [*args.set, "serve.max_batch_size=1"],
        }
        results = {}
        for label, overrides in modes.items():
            server = Server(run_dir, overrides)
            try:
                for name, data in images[:8]:  # warm-up: the replica's first batches
                    requests.post(f"{server.url}/predict", files={"file": (name, data)}, timeout=120).raise_for_status()
                results[label] = load(server.url, images, args.clients, args.seconds, args.bad_every)
            finally:
                results.setdefault(label, {})["stop_s"] = server.stop()
            print(label, json.dumps(results[label]), flush=True)
        from raydf.runs.resume import resume_config

        cfg = resume_config(str(run_dir))
        model = {"name": cfg.model.name, "resize": cfg.data.resize, "crop": cfg.data.crop, "folds": cfg.train.folds}
    batched, single = results.values()
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "clients": args.clients,
        "seconds": args.seconds,
        "bad_every": args.bad_every,
        "settings": args.set,
        "images": "shared FFHQ/StyleGAN 256 px JPEGs" if SHARED.is_dir() else "demo test images",
        "model": model,
        "modes": results,
        "throughput_ratio": batched["requests_per_s"] / single["requests_per_s"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n| mode | good req/s | p50 ms | p99 ms | failed good | bad uploads (statuses) |")
    print("|---|---:|---:|---:|---:|---|")
    for label, r in results.items():
        print(
            f"| {label} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['failed_good_requests']} | {r['bad_uploads']} ({r['bad_upload_statuses']}) |"
        )
    print(f"\nbatched / one at a time: {report['throughput_ratio']:.2f}x requests/s")


if __name__ == "__main__":
    main()
