"""Face extraction (`python -m raydf.faces`) on videos and uncropped photos built from the shared real faces.

The sources are made here: faces pasted at known places on varied backgrounds (raydf.data.demo_media), one
video with two faces, one with none, and broken files. Extraction runs as the real command (Ray Data, MTCNN).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, require_shared, wait_for
from ray_processes import kill_ours, kill_session

from raydf.config import FacesConfig
from raydf.data.catalog import read_train
from raydf.data.demo_media import load_faces, write_photo, write_video
from raydf.data.faces import LANDMARK_COLUMNS, MANIFEST_COLUMNS, FaceExtractor, FaceSettings
from raydf.data.folds import assign_folds

FRAMES = 6  # frames per video the tests extract (of 16)
SIZE = 96  # crop size the tests ask for
DETECT = 240  # detection size: below every frame's and photo's own, so boxes are scaled back (x1.33, x2)
BROKEN = {  # source -> the words its no_faces.csv reason must contain
    "fake/corrupt.mp4": "cannot be opened as a video",
    "real/zero_bytes.mp4": "empty file",
    "real/no_frames.mp4": "zero frames",
    "fake/no_face.mp4": "no face found in 6 frames",
    "real/not_a_photo.jpg": "text, not an image",
}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """SRC with real/ and fake/: 4 one-face videos, a two-face video, 4 photos, a truncated AVI, broken files;
    and where every face was pasted (truth[source] = list of {frame, face, box})."""
    shared = require_shared()
    root = tmp_path_factory.mktemp("media")
    (root / "real").mkdir()
    (root / "fake").mkdir()
    real = load_faces(sorted((shared / "real").glob("*.jpg"))[:8])
    fake = load_faces(sorted((shared / "fake").glob("*.jpg"))[:8])
    truth = {}
    for i in range(2):
        for label, faces in (("real", real), ("fake", fake)):
            name = f"{label}/video{i}.mp4"
            truth[name] = [p.__dict__ for p in write_video(root / name, [faces[i]], 16, seed=len(truth))]
            name = f"{label}/photo{i}.jpg"
            truth[name] = [write_photo(root / name, faces[2 + i], seed=len(truth)).__dict__]
    truth["real/two_faces.mp4"] = [p.__dict__ for p in write_video(root / "real/two_faces.mp4", real[4:6], 16, seed=9)]
    # An AVI cut in half: FFmpeg reads the frames before the cut (an MP4 cut short loses its index: corrupt).
    pasted = write_video(root / "whole.avi", [fake[6]], 16, seed=11)
    data = (root / "whole.avi").read_bytes()
    (root / "fake/truncated.avi").write_bytes(data[: len(data) // 2])
    (root / "whole.avi").unlink()
    truth["fake/truncated.avi"] = [p.__dict__ for p in pasted]
    write_video(root / "fake/no_face.mp4", [], 16, seed=12)
    (root / "fake/corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    (root / "real/zero_bytes.mp4").write_bytes(b"")
    writer = cv2.VideoWriter(str(root / "real/no_frames.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    writer.release()  # a container header and no frame
    (root / "real/not_a_photo.jpg").write_text("this is text, not a JPEG\n")
    (root / "truth.json").write_text(json.dumps(truth))
    return root, truth


def _extract(src: Path, out: Path, *overrides: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "raydf.faces",
            str(src),
            str(out),
            f"faces.frames_per_video={FRAMES}",
            f"faces.size={SIZE}",
            f"faces.detect_size={DETECT}",
            *overrides,
        ],
        cwd=REPO,
        env=dict(os.environ, RAY_AUTH_MODE="disabled"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **popen,
    )


@pytest.fixture(scope="module")
def extracted(media, tmp_path_factory):
    src, _ = media
    out = tmp_path_factory.mktemp("faces") / "out"
    proc = _extract(src, out)
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text[-3000:]
    return out, text


def _center_inside(row, boxes) -> bool:
    cx, cy = (row.box_x1 + row.box_x2) / 2, (row.box_y1 + row.box_y2) / 2
    return any(x1 <= cx <= x2 and y1 <= cy <= y2 for x1, y1, x2, y2 in boxes)


def test_crops_land_on_the_pasted_faces_and_every_source_is_accounted_for(media, extracted):
    src, truth = media
    out, text = extracted
    faces = pd.read_csv(out / "faces.csv")
    stats = json.loads((out / "extraction.json").read_text())
    assert list(faces.columns) == MANIFEST_COLUMNS
    # Every crop: a SIZE x SIZE image whose detected box is on a face pasted in that frame, and whose
    # landmarks lie inside the crop.
    for row in faces.itertuples():
        pasted = [p["box"] for p in truth[row.group] if p["frame"] == row.frame]
        assert _center_inside(row, pasted), (row.group, row.frame, row.box_x1, row.box_y1, pasted)
        crop = cv2.imread(str(out / row.path))
        assert crop.shape == (SIZE, SIZE, 3)
        lms = np.array([getattr(row, c) for c in LANDMARK_COLUMNS])
        assert ((lms > 0) & (lms < SIZE)).all()
    per_source = faces.groupby("group").size().to_dict()
    for name in ("real/video0.mp4", "real/video1.mp4", "fake/video0.mp4", "fake/video1.mp4", "real/two_faces.mp4"):
        assert per_source[name] == FRAMES, name  # keep=largest: one face in each of the 6 frames
        frames = faces.loc[faces["group"] == name, "frame"]
        assert frames.is_unique and frames.min() > 0 and frames.max() < 15  # spread over the 16
    for name in ("real/photo0.jpg", "real/photo1.jpg", "fake/photo0.jpg", "fake/photo1.jpg"):
        assert per_source[name] == 1
    assert 1 <= per_source["fake/truncated.avi"] <= FRAMES  # the frames before the cut
    assert "truncated" in stats["notes"]["fake/truncated.avi"]
    labels = faces.groupby("group")["label"].first()
    assert all(labels[g] == (1 if g.startswith("fake/") else 0) for g in labels.index)
    # Every broken or faceless source is listed once, with its reason; none is dropped silently.
    no_faces = pd.read_csv(out / "no_faces.csv")
    reasons = dict(zip(no_faces["group"], no_faces["reason"]))
    assert set(reasons) == set(BROKEN), reasons
    for name, words in BROKEN.items():
        assert words in reasons[name], (name, reasons[name])
    assert set(per_source) | set(reasons) == set(truth) | set(BROKEN)
    assert stats["faces"] == len(faces) and stats["sources"] == len(truth) + len(BROKEN)
    assert stats["settings"]["size"] == SIZE and stats["settings"]["frames_per_video"] == FRAMES
    assert f"data.train={out / 'faces.csv'}" in text
    assert not list(out.rglob("*.tmp"))


def test_the_manifest_trains_with_every_video_in_one_fold(extracted):
    """data.train=FACES_DIR/faces.csv: the catalog reads it (paths relative to it) with its group column, and
    the folds keep every frame of one video together."""
    out, _ = extracted
    table = read_train(out / "faces.csv")
    assert "group" in table and table["path"].map(os.path.isfile).all()
    folds = assign_folds(table, 2, seed=0)
    assert (table.assign(fold=folds).groupby("group")["fold"].nunique() == 1).all()


def test_keep_all_gives_both_faces_of_a_frame_and_min_face_drops_small_ones(media):
    src, truth = media
    path = str(src / "real/two_faces.mp4")
    settings = FacesConfig(frames_per_video=3, keep="all", detect_size=160)
    both = FaceExtractor(FaceSettings.from_config(settings, SIZE)).extract(path)
    assert both.reason is None and len(both.faces) == 6  # 2 faces x 3 frames
    for face in both.faces:
        pasted = [p["box"] for p in truth["real/two_faces.mp4"] if p["frame"] == face.frame]
        row = pd.Series(dict(zip(["box_x1", "box_y1", "box_x2", "box_y2"], face.box)))
        assert _center_inside(row, pasted)
    assert {f.face for f in both.faces} == {0, 1}
    # The pasted faces are 96 px, their detected boxes smaller: a 120 px minimum keeps none, and says so.
    settings = FacesConfig(frames_per_video=3, min_face=120, detect_size=160)
    none = FaceExtractor(FaceSettings.from_config(settings, SIZE)).extract(path)
    assert none.faces == [] and "smaller than faces.min_face=120" in none.reason


def test_other_settings_are_refused_and_leave_the_folder_as_it_was(media, extracted):
    src, _ = media
    out, _ = extracted
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    proc = _extract(src, out, "faces.margin=0.5")
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "faces.margin=0.5 (the folder's: 0.3)" in text and "Traceback" not in text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_killed_extraction_resumes_to_the_same_manifest(media, extracted, tmp_path):
    """SIGKILL mid-way (no clean-up at all), then the same command: the sources done before are kept, the rest
    extracted, and the manifest equals an uninterrupted extraction's; no crop of the killed attempt is left."""
    src, _ = media
    reference, _ = extracted
    out = tmp_path / "out"
    proc = _extract(src, out, "faces.actors=1")
    try:
        assert wait_for(lambda: len(list((out / "parts").glob("*.json"))) >= 3, timeout=300), proc.stdout.read()
    finally:
        kill_session(proc.pid)
        proc.wait()
    done_before = len(list((out / "parts").glob("*.json")))
    assert not (out / "faces.csv").exists()
    again = _extract(src, out)
    text, _ = again.communicate(timeout=600)
    assert again.returncode == 0, text[-3000:]
    stats = json.loads((out / "extraction.json").read_text())
    assert stats["done_before"] >= done_before >= 3
    key = ["group", "frame", "face"]
    resumed = pd.read_csv(out / "faces.csv").sort_values(key).reset_index(drop=True)
    clean = pd.read_csv(reference / "faces.csv").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(resumed, clean)
    on_disk = {p.relative_to(out).as_posix() for p in (out / "crops").rglob("*.png")}
    assert on_disk == set(resumed["path"])
    assert not list(out.rglob("*.tmp"))


def test_sigterm_stops_an_extraction_with_the_command_to_continue(media, tmp_path):
    src, _ = media
    out = tmp_path / "out"
    proc = _extract(src, out, "faces.actors=1", preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        assert wait_for(lambda: len(list((out / "parts").glob("*.json"))) >= 1, timeout=300)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        text, _ = proc.communicate(timeout=120)
    finally:
        kill_ours(session_id=proc.pid)
    assert proc.returncode == 143, text[-3000:]
    assert "interrupted (SIGTERM)" in text and "Run the same command again" in text and "Traceback" not in text
    assert not list(out.rglob("*.tmp"))


@pytest.fixture(scope="module")
def video_sets(tmp_path_factory):
    """A training set (6 real and 6 fake 8-frame videos, 2 photos each) and a test set (2 videos and a photo of
    each class, and a video with no face), all of different people."""
    shared = require_shared()
    real = load_faces(sorted((shared / "real").glob("*.jpg"))[20:40])
    fake = load_faces(sorted((shared / "fake").glob("*.jpg"))[20:40])
    root = tmp_path_factory.mktemp("videos")
    for name, n_videos, n_photos, first in (("train", 6, 2, 0), ("test", 2, 1, 10)):
        for c, (label, faces) in enumerate((("real", real), ("fake", fake))):
            folder = root / name / label
            folder.mkdir(parents=True)
            for i in range(n_videos):
                write_video(folder / f"video{i}.mp4", [faces[first + i]], 8, seed=100 * first + 20 * c + i)
            for i in range(n_photos):
                write_photo(folder / f"photo{i}.jpg", faces[first + n_videos + i], seed=100 * first + 20 * c + 10 + i)
    write_video(root / "test/fake/no_face.mp4", [], 8, seed=1)
    return root / "train", root / "test"


def test_train_on_videos_in_one_command_scores_every_video(ray_local, video_sets, tmp_path):
    """data.train/data.test hold videos: data.faces=auto extracts them (cached by set and settings), trains on the
    crops with every video's frames in one fold, and writes per-video submission and metrics beside per-face ones."""
    from raydf.config import load_config
    from raydf.data.face_store import read_manifest
    from raydf.pipelines.faces import faces_cache_dir, with_extracted_faces
    from raydf.pipelines.training import train

    train_src, test_src = video_sets
    run_dir = tmp_path / "run"
    overrides = [
        f"run_dir={run_dir}",
        f"data.train={train_src}",
        f"data.test={test_src}",
        "faces.frames_per_video=4",
        f"faces.detect_size={DETECT}",
        "data.resize=96",
        "data.crop=80",
        "train.folds=2",
        "train.epochs=1",
        "train.batch_size=16",
        "resources.gpus_per_fold=0",
        "train.precision=fp32",
        "model.name=test_efficientnet",
    ]
    cfg = load_config(None, overrides)
    train(cfg)
    train_faces, _ = read_manifest(faces_cache_dir(cfg, str(train_src)) / "faces.csv")
    test_faces, test_missing = read_manifest(faces_cache_dir(cfg, str(test_src)) / "faces.csv")
    assert len(train_faces) == 12 * 4 + 4 and train_faces["source"].nunique() == 16  # 4 frames a video
    # No video on both sides of a split.
    folds = pd.read_csv(run_dir / "folds.csv").merge(train_faces[["path", "source"]], on="path")
    assert len(folds) == len(train_faces) and (folds.groupby("source")["fold"].nunique() == 1).all()
    # One submission row per test video/photo, the faceless video included with the prior and a flag.
    sub = pd.read_csv(run_dir / "submission.csv", keep_default_na=False)
    assert list(sub.columns[:4]) == ["image", "label", "prob_fake", "n_faces"]
    assert sorted(sub["image"]) == sorted([*test_faces["source"].unique(), "fake/no_face.mp4"])
    faceless = sub.set_index("image").loc["fake/no_face.mp4"]
    assert faceless["flag"] == "no_face" and faceless["n_faces"] == 0 and faceless["prob_fake"] == 0.5
    per_face = pd.read_csv(run_dir / "submission_faces.csv")
    assert len(per_face) == len(test_faces)
    means = per_face.groupby("source")["prob_fake"].mean()
    np.testing.assert_allclose(sub.set_index("image").loc[means.index, "prob_fake"], means, atol=1e-9)
    assert (sub.set_index("image").loc[means.index, "n_faces"] == per_face.groupby("source").size()).all()
    summary = json.loads((run_dir / "summary.json").read_text())
    keys = {"accuracy", "auc", "log_loss", "ap", "eer"}
    assert keys <= set(summary["cv"]) and keys <= set(summary["cv_sources"]) and keys <= set(summary["test"])
    assert summary["cv_sources"]["n"] == 16 and summary["test_faces"]["n"] == len(test_faces)
    assert len(pd.read_csv(run_dir / "oof_sources.csv")) == 16
    assert "per video/photo" in (run_dir / "report.md").read_text()
    assert list(test_missing["source"]) == ["fake/no_face.mp4"]
    # raydf.predict on the raw test videos: their faces with the run's settings (found done in the cache), the
    # same per-video rows as the run's submission, per-face rows beside.
    from raydf.pipelines.prediction import predict

    out = tmp_path / "predictions.csv"
    predict(str(run_dir), str(test_src), str(out))
    predicted = pd.read_csv(out, keep_default_na=False)
    assert predicted["image"].tolist() == sub["image"].tolist()
    assert (
        predicted["n_faces"].tolist() == sub["n_faces"].tolist() and predicted["flag"].tolist() == sub["flag"].tolist()
    )
    np.testing.assert_allclose(predicted["prob_fake"], sub["prob_fake"], atol=1e-6)
    assert len(pd.read_csv(tmp_path / "predictions_faces.csv")) == len(test_faces)
    _serve_photos(run_dir, test_src, sub.set_index("image"), per_face)
    # raydf.evaluate on the raw test videos: per video/photo the run's own test metrics, per face the face ones.
    from raydf.pipelines.evaluation import evaluate

    result = json.loads(evaluate(str(run_dir), [str(test_src)], str(tmp_path / "eval"), bootstrap=50).read_text())
    [scored] = result["sets"].values()
    assert scored["per video/photo"]["n"] == len(sub) and scored["per face"]["n"] == len(test_faces)
    for level, key in (("per video/photo", "test"), ("per face", "test_faces")):
        assert scored[level]["auc"]["value"] == pytest.approx(summary[key]["auc"], abs=1e-6), level
    # The same sets and settings again: found done, nothing extracted; other settings: another folder.
    again = with_extracted_faces(cfg)
    assert again.data.train == str(faces_cache_dir(cfg, str(train_src)) / "faces.csv")
    stats = json.loads((Path(again.data.train).parent / "extraction.json").read_text())
    assert stats["extracted_now"] == 0 and stats["done_before"] == 16
    other = load_config(None, overrides + ["faces.margin=0.5"])
    assert faces_cache_dir(other, str(train_src)) != faces_cache_dir(cfg, str(train_src))


def _serve_photos(run_dir: Path, test_src: Path, sub: pd.DataFrame, per_face: pd.DataFrame) -> None:
    """`raydf.serve` of a run trained on extracted faces: an uploaded uncropped photo gets its faces found with the
    run's settings and the verdict `raydf.predict` gave it; a photo with no face gets 422 saying so."""
    import requests
    from ray_processes import Driver, child_env, free_port, short_tmpdir

    port = free_port()
    driver = Driver(
        ["-m", "raydf.serve", "--run", str(run_dir), "--port", str(port)], env=child_env(short_tmpdir("rdf-"))
    )
    try:
        driver.wait_for("raydf: serving", timeout_s=300)
        url = f"http://127.0.0.1:{port}/predict"
        for photo in ("real/photo0.jpg", "fake/photo0.jpg"):
            response = requests.post(url, files={"file": (photo, (test_src / photo).read_bytes())}, timeout=120)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["prob_fake"] == pytest.approx(sub.loc[photo, "prob_fake"], abs=1e-6)
            rows = per_face[per_face["source"] == photo]
            assert len(body["faces"]) == len(rows) == sub.loc[photo, "n_faces"]
            np.testing.assert_allclose([f["prob_fake"] for f in body["faces"]], rows["prob_fake"], atol=1e-6)
        blank = cv2.imencode(".jpg", np.full((240, 320, 3), 90, np.uint8))[1].tobytes()
        response = requests.post(url, files={"file": ("wall.jpg", blank)}, timeout=120)
        assert response.status_code == 422 and "no face found" in response.json()["error"], response.text
    finally:
        driver.kill()


@pytest.mark.slow
@pytest.mark.parametrize("gpu_nodes", [False, True], ids=["cpu-nodes", "gpu-nodes"])
def test_extraction_spreads_its_sources_over_the_nodes_of_a_cluster(media, tmp_path, gpu_nodes):
    """`python -m raydf.faces ... ray.address=` against a 3-node `ray.cluster_utils.Cluster` (one CPU each).
    CPU nodes: one actor per CPU, so every node extracts some of the sources. Two worker nodes with one (logical)
    GPU each: one actor per GPU, so those two nodes extract everything and the GPU-less head nothing; no CUDA here,
    so the actors run MTCNN on their CPU and the run says so. The manifest is the same as on one machine."""
    from ray_processes import Driver, HelperCluster, child_env

    src, truth = media
    cluster = HelperCluster()
    try:
        address = cluster.start_head(num_cpus=1)
        nodes = {cluster.add_node(num_cpus=1, num_gpus=int(gpu_nodes)) for _ in range(2)}
        out = tmp_path / "out"
        args = [
            "-m",
            "raydf.faces",
            str(src),
            str(out),
            f"ray.address={address}",
            f"faces.frames_per_video={FRAMES}",
            f"faces.size={SIZE}",
            f"faces.detect_size={DETECT}",
        ]
        driver = Driver(args, env=child_env(cluster.tmpdir))
        try:
            code = driver.finish(timeout_s=480)
        finally:
            driver.kill()
    finally:
        cluster.shutdown()
    assert code == 0, driver.output[-4000:]
    stats = json.loads((out / "extraction.json").read_text())
    per_node, per_device = stats["sources_per_node"], stats["sources_per_device"]
    total = len(truth) + len(BROKEN)
    assert sum(per_node.values()) == total
    if gpu_nodes:
        assert set(per_node) == nodes, per_node
        assert "on 2 actor(s) with 1 GPU each" in driver.output, driver.output[-4000:]
        assert per_device == {"cpu (granted GPU 0)": total}, per_device
        assert "ran on the CPU of actors that Ray granted a GPU" in driver.output
    else:
        assert len(per_node) == 3 and nodes <= set(per_node), per_node
        assert per_device == {"cpu": total}, per_device
        assert "granted a GPU" not in driver.output
    assert set(pd.read_csv(out / "faces.csv")["source"]) == set(truth)


def test_per_video_aggregation_mean_median_confident_and_faceless_sources():
    from raydf.runs.submission import aggregate_sources, confident_mean

    faces = pd.DataFrame(
        {
            "source": ["a.mp4"] * 3 + ["b.jpg"] + ["c.mp4"] * 2,
            "prob_fake": [0.9, 0.8, 0.1, 0.3, 0.7, 0.2],
            "flag": ["", "", "", "", "bad_input", "bad_input"],  # c.mp4: every crop unreadable
        }
    )
    no_faces = pd.DataFrame({"source": ["d.mp4"], "label": [1], "group": ["d.mp4"], "reason": ["no face found"]})
    mean = aggregate_sources(faces, no_faces, "mean", prior=0.4).set_index("image")
    assert list(mean.index) == ["a.mp4", "b.jpg", "c.mp4", "d.mp4"]
    assert mean.loc["a.mp4", "prob_fake"] == pytest.approx(0.6) and mean.loc["a.mp4", "n_faces"] == 3
    assert mean.loc["c.mp4", "prob_fake"] == 0.4 and mean.loc["c.mp4", "flag"] == "bad_input"
    assert mean.loc["d.mp4", "prob_fake"] == 0.4 and mean.loc["d.mp4", "flag"] == "no_face"
    assert mean.loc["d.mp4", "n_faces"] == 0 and mean.loc["b.jpg", "flag"] == ""
    assert mean["label"].tolist() == [1, 0, 0, 0]
    median = aggregate_sources(faces, no_faces, "median").set_index("image")
    assert median.loc["a.mp4", "prob_fake"] == pytest.approx(0.8)
    # The DFDC winner's rule on 32 frames: 14 confident fakes (> 0.8, more than 32 // 2.5 = 12 and than 11) decide.
    video = np.array([0.95] * 14 + [0.3] * 18)
    assert confident_mean(video) == pytest.approx(0.95)
    assert confident_mean(np.array([0.95] * 11 + [0.3] * 21)) == pytest.approx(video[:11].sum() / 32 + 0.3 * 21 / 32)
    assert confident_mean(np.array([0.1] * 30 + [0.6] * 2)) == pytest.approx(0.1)  # > 90% confidently real
    # aggregate_sources reduces every source at once: as confident_mean / np.median / np.mean one by one
    rng = np.random.default_rng(0)
    many = pd.DataFrame({"source": rng.integers(0, 40, 2000).astype(str), "prob_fake": rng.random(2000)})
    many.loc[many["source"].isin(["1", "2", "3"]), "prob_fake"] = 0.9 + 0.1 * rng.random()  # confidently fake
    many.loc[many["source"].isin(["4", "5"]), "prob_fake"] = 0.1 * rng.random()  # confidently real
    for how, reduce in (("confident", confident_mean), ("median", np.median), ("mean", np.mean)):
        got = aggregate_sources(many, no_faces.iloc[:0], how).set_index("image")["prob_fake"]
        expected = pd.Series({k: float(reduce(p.to_numpy())) for k, p in many.groupby("source")["prob_fake"]})
        np.testing.assert_allclose(got.loc[expected.index].to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)


# data.faces=auto on photos: MTCNN looks at a sample of them (raydf.data.faces.FramingSurvey).
AUTO_SAMPLE = 8  # photos the tests' surveys look at (40 by default)


def test_auto_framing_rule_small_or_off_centre_faces_in_most_photos():
    from raydf.data.faces import Framing, FramingSurvey, spread_sample

    crop, small, aside = Framing(0.40, 0.05), Framing(0.04, 0.05), Framing(0.20, 0.30)
    assert not crop.uncropped and small.uncropped and aside.uncropped
    assert not FramingSurvey([crop] * 8).extract
    assert FramingSurvey([small] * 4 + [aside] * 2 + [crop] * 2).extract
    assert FramingSurvey([small] * 4 + [crop] * 4).extract  # half scenes: cropping the crops again costs little
    assert not FramingSurvey([small] * 3 + [crop] * 5).extract
    # A photo without a face MTCNN keeps counts against extracting: the extraction would give it no crop either.
    few = FramingSurvey([small] * 3 + [None] * 5, unreadable=2)
    assert not few.extract and "MTCNN keeps a face in 3 of 8 sampled photos" in few.describe()
    assert not FramingSurvey([], unreadable=3).extract
    line = FramingSurvey([small] * 7 + [None]).describe()
    assert line.startswith("faces cover 4% of the frame on average in 8 sampled photos (7 small or off centre")
    assert "no face kept in 1" in line and line.endswith("extracting faces; data.faces=off to train on whole photos")
    line = FramingSurvey([crop] * 8).describe()
    assert line.startswith("faces fill 40% of the frame") and "already face crops" in line and "data.faces=on" in line
    assert (
        FramingSurvey([crop] * 8).describe(training=False).endswith("already face crops: predicting them as they are")
    )
    # The sample: spread evenly, both ends, every photo of a small set.
    assert spread_sample(2200, 8) == [0, 314, 628, 942, 1257, 1571, 1885, 2199]
    assert spread_sample(5, 8) == [0, 1, 2, 3, 4]


def _scenes(root: Path, faces: list[np.ndarray], labels: list[str], seed: int) -> dict[str, tuple]:
    """Uncropped photos: each face pasted at 1/4-1/3 of the short side, off centre, into a scene of its own size
    (gradient, blobs, rectangles); {source: pasted box}."""
    from raydf.data.demo_media import background, paste

    rng = np.random.default_rng(seed)
    boxes = {}
    for i, (face, label) in enumerate(zip(faces, labels)):
        w, h = [(480, 360), (400, 400), (360, 480), (640, 424)][i % 4]
        side = int(min(w, h) * rng.uniform(0.25, 0.33))
        # The face's centre 0.15-0.3 of the side from the middle, towards one of the four corners.
        sx, sy = (1 if i % 2 else -1), (1 if i // 2 % 2 else -1)
        cx = w * (0.5 + sx * rng.uniform(0.15, 0.3))
        cy = h * (0.5 + sy * rng.uniform(0.15, 0.3))
        scene = background(w, h, rng)
        x, y = int(np.clip(cx - side / 2, 0, w - side)), int(np.clip(cy - side / 2, 0, h - side))
        name = f"{label}/scene{i}.jpg"
        (root / label).mkdir(parents=True, exist_ok=True)
        boxes[name] = paste(scene, face, x, y, side)
        cv2.imwrite(str(root / name), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return boxes


def _crops(root: Path, shared: Path, first: int, n: int) -> Path:
    """n real and n fake shared-set faces as they are (links), in root/real and root/fake."""
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True)
        for p in sorted((shared / label).glob("*.jpg"))[first : first + n]:
            (root / label / p.name).symlink_to(p)
    return root


def _auto_config(tmp_path: Path, train: Path, test=None):
    from raydf.config import load_config

    overrides = [f"data.train={train}", "data.resize=96", f"data.cache_dir={tmp_path / 'cache'}"]
    return load_config(None, overrides + ([f"data.test={test}"] if test else []))


def test_auto_leaves_face_crops_as_they_are(shared_data, tiny_demo, tmp_path, caplog):
    """Shared-set faces (FFHQ-aligned and StyleGAN) and the built-in demo's: already crops, left alone."""
    from raydf.pipelines.faces import with_extracted_faces

    crops = _crops(tmp_path / "crops", shared_data, 300, 6)
    cfg = _auto_config(tmp_path, crops, tiny_demo.train)
    with caplog.at_level("INFO", logger="raydf.pipelines.faces"):
        assert with_extracted_faces(cfg, sample=AUTO_SAMPLE) == cfg
    lines = [r.getMessage() for r in caplog.records if "sampled photos" in r.getMessage()]
    assert len(lines) == 2 and all("already face crops: training on them as they are" in line for line in lines)
    assert f"data.train={crops}: faces fill" in lines[0] and f"in {AUTO_SAMPLE} sampled photos" in lines[0]
    assert not (tmp_path / "cache" / "faces").exists()  # nothing extracted


def test_auto_looks_at_an_unchanged_set_once_and_again_when_it_changes(shared_data, tmp_path, monkeypatch):
    """The survey is kept in the cache folder: another process on the same photos decides without running MTCNN;
    a photo rewritten since is looked at again."""
    import raydf.pipelines.faces as faces

    crops = _crops(tmp_path / "crops", shared_data, 300, 4)
    cfg = _auto_config(tmp_path, crops)
    assert not faces.wants_faces(cfg, str(crops), None, "data.train", sample=4)
    assert len(list((tmp_path / "cache" / "face-surveys").glob("*.json"))) == 1

    def no_mtcnn(*args, **kwargs):
        raise AssertionError("MTCNN ran again")

    monkeypatch.setattr(faces, "_SURVEYS", {})  # as a new process
    monkeypatch.setattr(faces, "survey_framing", no_mtcnn)
    assert not faces.wants_faces(cfg, str(crops), None, "data.train", sample=4)
    photo = next((crops / "real").iterdir())
    data = photo.read_bytes()
    photo.unlink()  # a link to the shared set: replaced by a changed copy (other size and modification time)
    photo.write_bytes(data + b"\0")
    with pytest.raises(AssertionError, match="MTCNN ran again"):
        faces.wants_faces(cfg, str(crops), None, "data.train", sample=4)


def test_auto_extracts_faces_from_uncropped_photos_in_training_and_prediction(ray_local, shared_data, tmp_path, caplog):
    """Shared-set faces pasted small and off centre into scenes: auto extracts them, and the run's training table is
    the crops' manifest, one crop on each pasted face. Predicting with a run trained with auto on face crops: the
    scenes' faces (the same folder's, found done), the crops as they are."""
    from raydf.pipelines.faces import faces_cache_dir, with_extracted_faces
    from raydf.pipelines.prediction import faces_of

    real = load_faces(sorted((shared_data / "real").glob("*.jpg"))[400:406])
    fake = load_faces(sorted((shared_data / "fake").glob("*.jpg"))[400:406])
    scenes = tmp_path / "scenes"
    pasted = _scenes(scenes, real + fake, ["real"] * 6 + ["fake"] * 6, seed=5)
    cfg = _auto_config(tmp_path, scenes)
    with caplog.at_level("INFO", logger="raydf.pipelines.faces"):
        run_cfg = with_extracted_faces(cfg, sample=AUTO_SAMPLE)
    [line] = [r.getMessage() for r in caplog.records if "sampled photos" in r.getMessage()]
    assert line.startswith(f"data.faces=auto: data.train={scenes}: faces cover ")
    assert f"of the frame on average in {AUTO_SAMPLE} sampled photos ({AUTO_SAMPLE} small or off centre" in line
    assert line.endswith("extracting faces; data.faces=off to train on whole photos")
    assert run_cfg.data.train == str(faces_cache_dir(cfg, str(scenes)) / "faces.csv")
    table = read_train(run_cfg.data.train)
    assert len(table) == 12 and table["path"].map(os.path.isfile).all()
    manifest = pd.read_csv(run_cfg.data.train)
    for row in manifest.itertuples():  # every crop on the face pasted into its photo, with the photo's label
        assert _center_inside(row, [pasted[row.source]]), (row.source, row.box_x1, row.box_y1, pasted[row.source])
        assert row.label == row.source.startswith("fake/")
    assert sorted(manifest["source"]) == sorted(pasted)
    # raydf.predict with a run trained with auto on face crops.
    crops = _crops(tmp_path / "crops", shared_data, 500, 2)
    crops_run = _auto_config(tmp_path, crops)
    caplog.clear()
    with caplog.at_level("INFO", logger="raydf.pipelines.faces"):
        assert faces_of(crops_run, str(scenes), None) == run_cfg.data.train
        assert faces_of(crops_run, str(crops), None) == str(crops)
    scene_line, crops_line = [r.getMessage() for r in caplog.records if "sampled photos" in r.getMessage()]
    assert scene_line.endswith("small or off centre, 0 face-filling): extracting faces")
    assert crops_line.endswith("already face crops: predicting them as they are")


def test_auto_extracts_the_test_set_of_a_run_trained_on_faces(shared_data, tmp_path, monkeypatch, caplog):
    """A training set of faces (a manifest, or photos extracted): the test set's faces too, without looking at it,
    as raydf.predict does for such a run; the extraction itself is replaced by a stand-in here."""
    import raydf.pipelines.faces as faces_stage

    manifest = tmp_path / "faces" / "faces.csv"
    manifest.parent.mkdir()
    pd.DataFrame(
        {"path": ["a.png"], "label": [0], "group": ["a.jpg"], "source": ["a.jpg"], "frame": [0], "face": [0]}
    ).to_csv(manifest, index=False)
    crops = _crops(tmp_path / "crops", shared_data, 600, 2)
    extracted_sets = []

    def extract(cfg, src, faces_dir, root=None):
        extracted_sets.append(src)
        return faces_stage.Extraction(Path(faces_dir), Path(faces_dir) / "faces.csv", None, None, {})

    monkeypatch.setattr(faces_stage, "extract_faces", extract)
    cfg = _auto_config(tmp_path, manifest, crops)
    with caplog.at_level("INFO", logger="raydf.pipelines.faces"):
        run_cfg = faces_stage.with_extracted_faces(cfg, sample=AUTO_SAMPLE)
    assert extracted_sets == [str(crops)] and run_cfg.data.train == str(manifest)
    assert run_cfg.data.test == str(faces_stage.faces_cache_dir(cfg, str(crops)) / "faces.csv")
    assert "sampled photos" not in caplog.text and "faces extracted, as the training set's" in caplog.text
