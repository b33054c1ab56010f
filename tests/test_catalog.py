"""Catalog: every accepted training/test format, and a clear DataError for every user mistake."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from raydf.data.catalog import IMAGE_EXTENSIONS, read_test, read_train
from raydf.errors import DataError


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def _csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _assert_table(df: pd.DataFrame, columns: list[str]) -> None:
    assert list(df.columns) == columns
    assert isinstance(df.index, pd.RangeIndex) and df.index.start == 0
    assert all(Path(p).is_absolute() for p in df["path"])
    if "label" in df:
        assert df["label"].dtype == "int64"


# ---------------------------------------------------------------- training formats


def test_train_csv_path_label_resolves_relative_paths_against_csv_folder(tmp_path):
    tmp_path = tmp_path.resolve()
    spec = _csv(tmp_path / "data" / "train.csv", "path,label\nimg/a.jpg,0\nimg/b.jpg,1\n/abs/c.png,1\n")
    df = read_train(spec)
    _assert_table(df, ["path", "label"])
    assert df["path"].tolist() == [
        str((tmp_path / "data" / "img" / "a.jpg").resolve()),
        str((tmp_path / "data" / "img" / "b.jpg").resolve()),
        "/abs/c.png",
    ]
    assert df["label"].tolist() == [0, 1, 1]


@pytest.mark.parametrize("cells", [["0", "1"], [" 0.0", "1.0 "], ["Real", " FAKE "], ["real", "fake"]])
def test_train_labels_accept_numbers_and_real_fake_in_any_case(tmp_path, cells):
    spec = _csv(tmp_path / "t.csv", f"path,label\na.jpg,{cells[0]}\nb.jpg,{cells[1]}\n")
    assert read_train(spec)["label"].tolist() == [0, 1]


def test_train_seed_one_hot_csv(tmp_path):
    spec = _csv(tmp_path / "t.csv", "path,real,fake\na.jpg,1,0\nb.jpg,0,1\nc.jpg,1.0,0.0\n")
    df = read_train(spec)
    _assert_table(df, ["path", "label"])
    assert df["label"].tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    "path_col", ["path", "FilePath", "file_path", "image_path", "file", "filename", "Image", "img"]
)
@pytest.mark.parametrize("label_col", ["label", "Target", "class", "is_fake"])
def test_train_column_synonyms(tmp_path, path_col, label_col):
    tmp_path = tmp_path.resolve()
    spec = _csv(tmp_path / "t.csv", f"{path_col},{label_col}\na.jpg,0\nb.jpg,1\n")
    df = read_train(spec)
    assert df["path"].tolist() == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert df["label"].tolist() == [0, 1]


def test_train_group_column_kept_as_str(tmp_path):
    spec = _csv(tmp_path / "t.csv", "path,label,Group\na.jpg,0,7\nb.jpg,1,7\nc.jpg,1,008\n")
    df = read_train(spec)
    _assert_table(df, ["path", "label", "group"])
    assert df["group"].tolist() == ["7", "7", "008"]


def test_train_image_root_for_relative_paths_only(tmp_path):
    tmp_path = tmp_path.resolve()
    spec = _csv(tmp_path / "csvs" / "t.csv", "path,label\na.jpg,0\n/abs/b.jpg,1\n")
    df = read_train(spec, image_root=tmp_path / "images")
    assert df["path"].tolist() == [str(tmp_path / "images" / "a.jpg"), "/abs/b.jpg"]


def test_csv_uris_are_kept_as_written(tmp_path):
    tmp_path = tmp_path.resolve()
    text = "path,label\ns3://bucket/x.jpg,0\n file:///a/b.png ,1\nimg/c.jpg,1\n"
    spec = _csv(tmp_path / "t.csv", text)
    expected = ["s3://bucket/x.jpg", "file:///a/b.png", str(tmp_path / "img" / "c.jpg")]
    assert read_train(spec)["path"].tolist() == expected
    assert read_train(spec, image_root=tmp_path / "elsewhere")["path"].tolist()[:2] == expected[:2]
    test = read_test(spec)
    assert test["path"].tolist() == expected
    assert test["image"].tolist() == ["s3://bucket/x.jpg", " file:///a/b.png ", "img/c.jpg"]  # as written


def test_csv_paths_resolve_symlinks_and_dot_dot(tmp_path):
    tmp_path = tmp_path.resolve()
    _touch(tmp_path / "real" / "a.jpg", tmp_path / "other" / "b.jpg")
    (tmp_path / "link").symlink_to(tmp_path / "real")  # a linked folder
    (tmp_path / "real" / "l.jpg").symlink_to(tmp_path / "other" / "b.jpg")  # a linked file
    rows = ["link/a.jpg", "link/l.jpg", "link/../other/b.jpg", "./real//a.jpg", "missing/c.jpg"]
    spec = _csv(tmp_path / "t.csv", "path,label\n" + "".join(f"{r},{i % 2}\n" for i, r in enumerate(rows)))
    assert read_test(spec)["path"].tolist() == [str((tmp_path / r).resolve()) for r in rows]
    assert read_test(spec)["path"].tolist()[:3] == [
        str(tmp_path / "real" / "a.jpg"),
        str(tmp_path / "other" / "b.jpg"),
        str(tmp_path / "other" / "b.jpg"),
    ]


def test_train_csv_with_bom_blank_lines_and_header_spaces(tmp_path):
    spec = tmp_path / "t.csv"
    spec.write_bytes("\ufeffpath , label\na.jpg,0\n\nb.jpg,1\n\n".encode())
    assert read_train(spec)["label"].tolist() == [0, 1]


def test_train_folder_real_fake_recursive_sorted_ignores_non_images(tmp_path):
    root = tmp_path / "train"
    _touch(
        root / "Real" / "b.jpg",
        root / "Real" / "sub" / "a.PNG",
        root / "Real" / ".DS_Store",
        root / "fake" / "z.webp",
        root / "fake" / "Thumbs.db",
        root / "fake" / "._z.jpg",
        root / "fake" / "notes.txt",
    )
    df = read_train(root)
    _assert_table(df, ["path", "label"])
    rel = [Path(p).relative_to(root.resolve()).as_posix() for p in df["path"]]
    assert rel == ["Real/b.jpg", "Real/sub/a.PNG", "fake/z.webp"]  # byte order: "R" < "f"
    assert df["label"].tolist() == [0, 0, 1]


def test_image_extensions_cover_common_formats():
    # HEIC and SVG are not decodable: a folder scan lists them so the pre-flight check reports them by name.
    assert set(IMAGE_EXTENSIONS) == {
        ".jpg",
        ".jpeg",
        ".jfif",
        ".png",
        ".bmp",
        ".webp",
        ".tif",
        ".tiff",
        ".gif",
        ".avif",
        ".heic",
        ".heif",
        ".svg",
    }


# ---------------------------------------------------------------- test formats


def test_test_kaggle_template_keeps_order_and_names_and_has_no_label(tmp_path):
    tmp_path = tmp_path.resolve()
    names = ["test14200.jpg", "test3.jpg", "test100.jpg", "test1.jpg"]
    spec = _csv(tmp_path / "sample_submission.csv", "image,label\n" + "".join(f"{n},\n" for n in names))
    df = read_test(spec, image_root=tmp_path / "test")
    _assert_table(df, ["path", "image"])
    assert df["image"].tolist() == names
    assert df["path"].tolist() == [str(tmp_path / "test" / n) for n in names]


def test_test_template_with_nan_labels_has_no_label(tmp_path):
    spec = _csv(tmp_path / "s.csv", "image,label\na.jpg,NaN\nb.jpg,\n")
    assert "label" not in read_test(spec).columns


def test_test_csv_with_labels(tmp_path):
    spec = _csv(tmp_path / "t.csv", "filepath,label\nsub/b.jpg,fake\na.jpg,Real\n")
    df = read_test(spec)
    _assert_table(df, ["path", "image", "label"])
    assert df["image"].tolist() == ["sub/b.jpg", "a.jpg"]
    assert df["label"].tolist() == [1, 0]


def test_test_csv_with_some_labels_missing_has_no_label(tmp_path):
    spec = _csv(tmp_path / "t.csv", "path,label\na.jpg,1\nb.jpg,\n")
    assert list(read_test(spec).columns) == ["path", "image"]


def test_test_csv_paths_only(tmp_path):
    spec = _csv(tmp_path / "t.csv", "path\nb.jpg\na.jpg\n")
    df = read_test(spec)
    _assert_table(df, ["path", "image"])
    assert df["image"].tolist() == ["b.jpg", "a.jpg"]


def test_test_folder_unlabelled(tmp_path):
    root = tmp_path / "test"
    _touch(root / "b.jpg", root / "a" / "c.tiff", root / "readme.md")
    df = read_test(root)
    _assert_table(df, ["path", "image"])
    assert df["image"].tolist() == ["a/c.tiff", "b.jpg"]
    assert df["path"].tolist() == [str(root.resolve() / "a" / "c.tiff"), str(root.resolve() / "b.jpg")]


def test_test_folder_labelled(tmp_path):
    root = tmp_path / "test"
    _touch(root / "real" / "r.jpg", root / "FAKE" / "f.jpeg")
    df = read_test(root)
    _assert_table(df, ["path", "image", "label"])
    assert dict(zip(df["image"], df["label"])) == {"real/r.jpg": 0, "FAKE/f.jpeg": 1}


# ---------------------------------------------------------------- errors


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("fn", [read_train, read_test])
def test_error_spec_missing(tmp_path, fn):
    msg = _error(fn, tmp_path / "nope.csv")
    assert "nope.csv" in msg and "does not exist" in msg and "real/" in msg


def test_error_csv_empty(tmp_path):
    msg = _error(read_train, _csv(tmp_path / "e.csv", ""))
    assert "e.csv" in msg and "empty" in msg


def test_error_csv_no_rows(tmp_path):
    msg = _error(read_train, _csv(tmp_path / "h.csv", "path,label\n\n"))
    assert "h.csv" in msg and "no rows" in msg


def test_error_csv_unparsable(tmp_path):
    msg = _error(read_train, _csv(tmp_path / "bad.csv", 'path,label\n"a.jpg,0\n'))
    assert "bad.csv" in msg and "cannot be parsed" in msg


def test_error_no_path_column(tmp_path):
    msg = _error(read_train, _csv(tmp_path / "t.csv", "name,label\na.jpg,0\n"))
    assert "t.csv" in msg and "['name', 'label']" in msg and "filepath" in msg


def test_error_no_label_column(tmp_path):
    msg = _error(read_train, _csv(tmp_path / "t.csv", "path,kind\na.jpg,0\n"))
    assert "t.csv" in msg and "['path', 'kind']" in msg and "is_fake" in msg and "real,fake" in msg


def test_error_unknown_label_values(tmp_path):
    spec = _csv(tmp_path / "t.csv", "path,label\na.jpg,0\nb.jpg,yes\nc.jpg,2\nd.jpg,yes\ne.jpg,\n")
    msg = _error(read_train, spec)
    assert "t.csv" in msg and "'label'" in msg
    assert "'yes'" in msg and "'2'" in msg and "(empty)" in msg
    assert "line 3" in msg and "line 4" in msg and "line 6" in msg


def test_error_unknown_label_in_test_csv(tmp_path):
    msg = _error(read_test, _csv(tmp_path / "t.csv", "path,label\na.jpg,maybe\nb.jpg,\n"))
    assert "'maybe'" in msg and "line 2" in msg


def test_error_one_hot_row_not_summing_to_one(tmp_path):
    msg = _error(read_train, _csv(tmp_path / "t.csv", "path,real,fake\na.jpg,1,0\nb.jpg,1,1\nc.jpg,0,1\n"))
    assert "t.csv" in msg and "line 3" in msg and "real + fake" in msg


def test_error_empty_path_cell(tmp_path):
    msg = _error(read_train, _csv(tmp_path / "t.csv", "path,label\na.jpg,0\n ,1\n"))
    assert "t.csv" in msg and "empty 'path'" in msg and "line 3" in msg


def test_error_empty_group_cell(tmp_path):
    msg = _error(read_train, _csv(tmp_path / "t.csv", "path,label,group\na.jpg,0,g\nb.jpg,1,\n"))
    assert "t.csv" in msg and "'group'" in msg and "line 3" in msg


def test_error_train_folder_without_class_folders(tmp_path):
    _touch(tmp_path / "imgs" / "real" / "a.jpg", tmp_path / "imgs" / "x" / "b.jpg")
    msg = _error(read_train, tmp_path / "imgs")
    assert "imgs" in msg and "real/ and fake/" in msg


def test_error_train_folder_without_images(tmp_path):
    (tmp_path / "d" / "real").mkdir(parents=True)
    (tmp_path / "d" / "fake").mkdir()
    msg = _error(read_train, tmp_path / "d")
    assert str((tmp_path / "d").resolve()) in msg and "no images" in msg


def test_error_test_folder_without_images(tmp_path):
    _touch(tmp_path / "t" / "notes.txt")
    msg = _error(read_test, tmp_path / "t")
    assert str((tmp_path / "t").resolve()) in msg and "no images" in msg


def test_error_train_only_one_class_folder(tmp_path):
    _touch(tmp_path / "d" / "fake" / "a.jpg", tmp_path / "d" / "fake" / "b.jpg")
    (tmp_path / "d" / "real").mkdir()
    msg = _error(read_train, tmp_path / "d")
    assert "only one class" in msg and "2 fake" in msg and "no real" in msg


def test_error_train_only_one_class_csv(tmp_path):
    msg = _error(read_train, _csv(tmp_path / "t.csv", "path,label\na.jpg,real\nb.jpg,0\nc.jpg,REAL\n"))
    assert "t.csv" in msg and "3 real" in msg and "no fake" in msg


def test_error_same_image_listed_twice_names_the_lines(tmp_path):
    spec = _csv(tmp_path / "t.csv", "path,label\na.jpg,0\nb.jpg,1\n./a.jpg,0\nc.jpg,1\nsub/../b.jpg,0\n")
    msg = _error(read_train, spec)
    assert "t.csv" in msg and "more than once" in msg
    assert f"{(tmp_path / 'a.jpg').resolve()} at line 2, line 4;" in msg
    assert f"{(tmp_path / 'b.jpg').resolve()} at line 3, line 6 with conflicting labels" in msg


def test_group_by_names_the_group_column(tmp_path):
    spec = _csv(tmp_path / "t.csv", "path,label,video,group\na.jpg,0,v1,x\nb.jpg,1,v1,y\nc.jpg,1,v2,z\n")
    assert read_train(spec, group_by="Video")["group"].tolist() == ["v1", "v1", "v2"]
    assert read_train(spec)["group"].tolist() == ["x", "y", "z"]  # default: the `group` column


def test_error_group_by_column_missing(tmp_path):
    spec = _csv(tmp_path / "t.csv", "path,label,source\na.jpg,0,s\nb.jpg,1,s\n")
    msg = _error(read_train, spec, group_by="video")
    assert "train.group_by=video" in msg and "['path', 'label', 'source']" in msg


def test_error_group_by_with_a_folder(tmp_path):
    _touch(tmp_path / "d" / "real" / "a.jpg", tmp_path / "d" / "fake" / "b.jpg")
    assert "train.group_by=video" in _error(read_train, tmp_path / "d", group_by="video")


def test_folder_scan_lists_images_the_decoder_will_refuse(tmp_path):
    """A HEIC photo in real/ is listed (the pre-flight then reports it by name), not skipped silently."""
    _touch(tmp_path / "d" / "real" / "a.HEIC", tmp_path / "d" / "real" / "b.jfif", tmp_path / "d" / "fake" / "c.gif")
    names = [Path(p).name for p in read_train(tmp_path / "d")["path"]]
    assert names == ["c.gif", "a.HEIC", "b.jfif"]  # sorted by path: fake/ before real/
