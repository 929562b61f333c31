"""compiler.dataset: calibration / validation inputs at the CLI boundary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compiler.dataset import load, read_labels
from compiler.errors import BadInput


def test_uint8_pixels_become_float_inputs_with_an_image_preprocess(tmp_path: Path) -> None:
    np.savez(tmp_path / "v.npz", x=np.full((2, 4, 4), 255, np.uint8), y=np.array([0, 1]))
    s = load(tmp_path / "v.npz", "validation data", True, None, 0.0)
    assert s.x.shape == (2, 4, 4, 1) and s.x.dtype == np.float32 and float(s.x.max()) == 1.0
    assert s.preprocess == {"kind": "image", "height": 4, "width": 4, "channels": 1, "scale": 1 / 255, "offset": 0.0}
    assert len(s.sha256) == 64


def test_float_inputs_are_taken_as_tensors(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", x=np.zeros((3, 30), np.float64))
    s = load(tmp_path / "c.npz", "calibration data", False, None, 0.0)
    assert s.preprocess == {"kind": "tensor"} and s.x.dtype == np.float32 and s.y is None


@pytest.mark.parametrize(
    "arrays,problem",
    [
        ({"y": np.zeros(3)}, "has no array 'x' (found ['y'])"),
        ({"x": np.zeros((2, 3), np.float32), "y": np.zeros(3, np.int64)}, "x has 2 samples but y has 3 labels"),
        ({"x": np.zeros((2, 3), np.float32), "y": np.zeros(2)}, "y must be integer class ids, got dtype float64"),
        ({"x": np.array([[np.nan]], np.float32), "y": np.zeros(1, np.int64)}, "x contains NaN or infinite values"),
    ],
)
def test_bad_npz_contents_are_named(tmp_path: Path, arrays: dict, problem: str) -> None:
    np.savez(tmp_path / "v.npz", **arrays)
    with pytest.raises(BadInput) as exc:
        load(tmp_path / "v.npz", "validation data", True, None, 0.0)
    assert str(exc.value).startswith(str(tmp_path / "v.npz")) and problem in str(exc.value)


def test_a_file_that_is_not_npz_is_named(tmp_path: Path) -> None:
    (tmp_path / "v.npz").write_text("hello")
    with pytest.raises(BadInput, match="v.npz: not a readable .npz file"):
        load(tmp_path / "v.npz", "validation data", True, None, 0.0)


def test_image_folder_with_labels_csv_resizes_and_maps_label_names(tmp_path: Path) -> None:
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (5, 5), (0, 0, 255)).save(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text("filename,label\na.png,red\nb.png,1\n")
    s = load(tmp_path, "validation data", True, None, 0.0, (8, 8), 3, ("red", "blue"))
    assert s.x.shape == (2, 8, 8, 3) and s.y.tolist() == [0, 1]
    assert s.x[0, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_image_folder_problems_name_the_line_or_file(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("a.png,green\n")
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(
        BadInput, match=r"labels.csv: line 1: label 'green' is neither a class id nor in the labels file"
    ):
        load(tmp_path, "validation data", True, None, 0.0, (4, 4), 1, ("red",))
    (tmp_path / "labels.csv").write_text("missing.png,0\n")
    with pytest.raises(BadInput, match="line 1: image 'missing.png' not found"):
        load(tmp_path, "validation data", True, None, 0.0, (4, 4), 1, None)
    (tmp_path / "labels.csv").write_text("a.png,0\nbroken.png,0\n")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(BadInput, match="broken.png: not a readable image"):
        load(tmp_path, "validation data", True, None, 0.0, (4, 4), 1, None)


def test_image_folder_without_a_known_size_asks_for_one(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="pass --image-size HxW"):
        load(tmp_path, "calibration data", False, None, 0.0)


def test_coral_style_indexed_labels_lose_their_index(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("0  background\n1  tench\n2 goldfish\n")
    assert read_labels(tmp_path / "l.txt") == ("background", "tench", "goldfish")
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(BadInput, match="e.txt: labels file is empty"):
        read_labels(tmp_path / "e.txt")
