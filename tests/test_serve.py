"""`python -m raydf.serve`: the soft vote over real HTTP on loopback, bad uploads, and the web page in Chromium."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image
from ray_processes import Driver, RayStartHead, child_env, free_port, short_tmpdir
from scipy.special import expit

from raydf.data.catalog import read_test

# The run is fp32 (finished_run), so the server's P(fake) equals the soft vote's to float rounding; submission.csv
# keeps float32 values (~6e-8 apart at 0.5).
ATOL = 1e-6


@pytest.fixture(scope="module")
def server(finished_run, tiny_demo):
    run_dir, _ = finished_run
    port = free_port()
    driver = Driver(
        ["-m", "raydf.serve", "--run", str(run_dir), "--port", str(port)], env=child_env(short_tmpdir("rdf-serve-"))
    )
    try:
        driver.wait_for("raydf: serving", timeout_s=300)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, driver=driver, run_dir=run_dir)
    finally:
        driver.kill()


def post(server, name: str, data: bytes, **params) -> requests.Response:
    return requests.post(f"{server.url}/predict", files={"file": (name, data)}, params=params, timeout=120)


def test_each_face_gets_the_soft_vote_of_the_run(server, tiny_demo):
    """The same P(fake) per image as the run's submission (which `raydf.predict` reproduces), with the per-fold
    probabilities whose mean it is, the image's box and the run it came from."""
    expected = pd.read_csv(server.run_dir / "submission.csv")["prob_fake"].to_numpy()
    calibration = json.loads((server.run_dir / "calibration.json").read_text())
    paths = read_test(tiny_demo.test)["path"].tolist()
    got = []
    for path in paths:
        response = post(server, Path(path).name, Path(path).read_bytes())
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["calibration"] == "temperature" and body["threshold"] == calibration["threshold"]
        assert body["label"] == ("fake" if body["prob_fake"] > calibration["threshold"] else "real")
        # The run's calibrated vote of its folds (conftest.finished_run): sigmoid(logit of the folds' mean / T)
        folds = np.asarray(body["prob_fake_folds"])
        mean = np.clip(folds.mean(), 1e-7, 1 - 1e-7)
        vote = expit((np.log(mean) - np.log1p(-mean)) / calibration["temperature"])
        assert len(folds) == 2 and np.isclose(vote, body["prob_fake"], rtol=0, atol=ATOL)
        width, height = Image.open(path).size
        assert [(f["box"], f["prob_fake"]) for f in body["faces"]] == [([0, 0, width, height], body["prob_fake"])]
        assert body["run"] == str(server.run_dir) and body["model"] == "test_efficientnet"
        got.append(body["prob_fake"])
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    assert np.std(expected) > 20 * ATOL  # answers for the wrong image would not pass


def test_concurrent_requests_each_get_their_own_answer(server, tiny_demo):
    """32 requests at once are batched together (@serve.batch): each answer is still its own image's."""
    paths = read_test(tiny_demo.test)["path"].tolist()
    expected = pd.read_csv(server.run_dir / "submission.csv")["prob_fake"].to_numpy()
    with ThreadPoolExecutor(len(paths)) as pool:
        responses = list(pool.map(lambda p: post(server, Path(p).name, Path(p).read_bytes()), paths))
    assert [r.status_code for r in responses] == [200] * len(paths)
    np.testing.assert_allclose([r.json()["prob_fake"] for r in responses], expected, rtol=0, atol=ATOL)


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def _bad_uploads(tiny_demo) -> list[tuple[str, str, bytes, int, str]]:
    jpeg = Path(read_test(tiny_demo.test)["path"].iloc[0]).read_bytes()
    return [
        ("empty", "empty.jpg", b"", 400, "empty"),
        ("text", "notes.txt", b"hello, this is not an image\n", 415, "not an image"),
        ("pdf", "scan.jpg", b"%PDF-1.7\n" + b"0" * 500, 415, "PDF"),
        ("truncated", "cut.jpg", jpeg[: len(jpeg) // 2], 422, "truncated JPEG"),
        ("huge", "huge.png", _png(9000, 9000), 413, "megapixels"),  # 81 Mpx in a 240 KB file: refused from its header
        ("too large", "big.bin", os.urandom(17 * 2**20), 413, "serve.max_upload_mb"),
    ]


def test_bad_uploads_get_a_4xx_naming_the_problem_and_the_server_keeps_serving(server, tiny_demo):
    good = Path(read_test(tiny_demo.test)["path"].iloc[0])
    for case, name, data, status, says in _bad_uploads(tiny_demo):
        response = post(server, name, data)
        assert response.status_code == status, (case, response.text)
        assert says in response.json()["error"], (case, response.text)
        assert post(server, good.name, good.read_bytes()).status_code == 200, case  # still serving
    no_file = requests.post(f"{server.url}/predict", data={"other": "x"}, timeout=60)
    assert no_file.status_code == 400 and "'file'" in no_file.json()["error"]


def test_health_docs_and_heatmap(server, tiny_demo):
    health = requests.get(f"{server.url}/health", timeout=60).json()
    assert health["status"] == "ok" and health["folds"] == 2 and health["model"] == "test_efficientnet"
    assert "/predict" in requests.get(f"{server.url}/openapi.json", timeout=60).json()["paths"]
    assert requests.get(f"{server.url}/docs", timeout=60).status_code == 200
    path = Path(read_test(tiny_demo.test)["path"].iloc[0])
    body = post(server, path.name, path.read_bytes(), heatmap="true").json()
    import base64

    overlay = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert overlay.format == "PNG" and overlay.size == (80, 80)  # the model's input: data.crop


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port`, from the kernel's tables (/proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel writes each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(words)))
    return found


def test_it_listens_on_loopback_only(server):
    assert _listening_addresses(server.port) == {"127.0.0.1"}


def _chromium():
    """Debian's chromium and chromedriver (`make browser`); required under CI, skipped elsewhere without them."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    message = "chromium and chromedriver are not installed (make browser)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message}; CI installs them in .ci/run")
    pytest.skip(message)


def test_the_web_page_shows_the_verdict_of_an_uploaded_face(server, tiny_demo, tmp_path):
    """A real browser: choose a file on the page, wait for the verdict, compare it with the API's answer."""
    browser, chromedriver = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1000,800",
    ):
        options.add_argument(flag)
    path = Path(read_test(tiny_demo.test)["path"].iloc[3])
    api = post(server, path.name, path.read_bytes()).json()
    chrome = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        chrome.get(server.url + "/")
        WebDriverWait(chrome, 60).until(lambda d: "fold models" in d.find_element(By.ID, "model").text)
        chrome.find_element(By.ID, "file").send_keys(str(path))
        WebDriverWait(chrome, 120).until(lambda d: d.execute_script("return document.body.dataset.state") == "done")
        shown = float(chrome.find_element(By.ID, "prob").text)
        verdict = chrome.find_element(By.ID, "verdict").text
        folds = [float(td.text) for td in chrome.find_elements(By.CSS_SELECTOR, "#folds td:nth-child(2)")]
        heatmap = chrome.execute_script("return document.getElementById('heatmap').naturalWidth")
        chrome.save_screenshot(str(tmp_path / "page.png"))
    finally:
        chrome.quit()
    assert shown == pytest.approx(api["prob_fake"], abs=5e-5)  # the page shows 4 decimals
    assert verdict == api["label"].capitalize()
    assert folds == pytest.approx(api["prob_fake_folds"], abs=5e-5)
    assert heatmap == 80  # the Grad-CAM overlay loaded, at the model's input size
    assert (tmp_path / "page.png").stat().st_size > 0


def test_on_a_running_cluster_a_stop_removes_the_application_and_leaves_serve_running(finished_run, tiny_demo):
    """`--address` deploys on a cluster started with `ray start --head`; SIGTERM (like Ctrl-C) removes raydf's
    application, and Serve's proxy goes on answering (for the cluster's other applications) with 404 for raydf's
    routes. SIGTERM rather than SIGINT: a runner started in a script's background would pass SIGINT on ignored."""
    import signal

    run_dir, _ = finished_run
    head = RayStartHead(num_cpus=2)
    try:
        head.wait_ready()
        port = free_port()
        args = ["-m", "raydf.serve", "--run", str(run_dir), "--port", str(port), "--address", head.address]
        driver = Driver(args, env=child_env(head.tmpdir))
        try:
            driver.wait_for("raydf: serving", timeout_s=300)
            assert f"connected to the Ray cluster at {head.address}" in driver.output
            path = Path(read_test(tiny_demo.test)["path"].iloc[0])
            response = requests.post(
                f"http://127.0.0.1:{port}/predict", files={"file": (path.name, path.read_bytes())}, timeout=120
            )
            expected = pd.read_csv(run_dir / "submission.csv")["prob_fake"].iloc[0]
            assert response.status_code == 200 and abs(response.json()["prob_fake"] - expected) < ATOL
            driver.proc.send_signal(signal.SIGTERM)
            assert driver.finish(timeout_s=120) == 143, driver.output[-3000:]
        finally:
            driver.kill()
        assert "stopped serving" in driver.output and "Traceback" not in driver.output
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=60).status_code == 404
    finally:
        head.stop()
