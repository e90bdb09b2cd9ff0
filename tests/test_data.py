"""Image folders: decoding every common mode, skips counted, bad folders refused."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data import (class_weights, decode_images, load_image_folder, sample_per_class, scan_folder,
                              stratified_split)
from transferkit.errors import DataError, RecipeError


def _write(path, mode, size=(40, 30), fmt=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"L": 128, "RGB": (200, 10, 10), "RGBA": (10, 200, 10, 128), "CMYK": (0, 255, 255, 0),
              "I;16": 40000}.get(mode)
    image = Image.new(mode if mode != "P" else "RGB", size, colour)
    if mode == "P":
        image = image.convert("P")
    image.save(path, format=fmt, **kwargs)


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "data"
    _write(root / "a" / "rgb.jpg", "RGB")
    _write(root / "a" / "grey.png", "L")
    _write(root / "a" / "rgba.png", "RGBA")
    _write(root / "a" / "deep.png", "I;16")
    _write(root / "b" / "palette.gif", "P")
    _write(root / "b" / "cmyk.jpg", "CMYK")
    _write(root / "b" / "big.JPEG", "RGB", size=(1200, 900))
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "b" / "notes.txt").write_text("not an image")
    return root


def test_scan_lists_images_by_class(folder):
    scan = scan_folder(folder)
    assert scan.class_names == ("a", "b")
    assert scan.counts == {"a": 4, "b": 4}
    assert [p.endswith("notes.txt") for p in scan.ignored] == [True]


def test_every_mode_decodes_and_corrupt_files_are_counted(folder):
    scan = scan_folder(folder)
    images, kept, skipped = decode_images(scan.files, 32)
    assert images.shape == (7, 32, 32, 3) and images.dtype == np.uint8
    assert len(kept) == 7
    assert len(skipped) == 1 and skipped[0][0].endswith("broken.jpg")
    by_name = {scan.files[i].rsplit("/", 1)[-1]: images[k] for k, i in enumerate(kept)}
    assert by_name["rgb.jpg"][16, 16].astype(int).tolist() == pytest.approx([200, 10, 10], abs=4)
    assert len(set(by_name["grey.png"][16, 16])) == 1  # grey becomes equal RGB channels
    assert by_name["rgba.png"][16, 16, 1] > by_name["rgba.png"][16, 16, 0]  # composited on white


def test_load_folder_with_val_dir_and_split(folder, tmp_path):
    images = load_image_folder(folder, image_size=32, val_split=0.25, seed=1)
    assert len(images.y_train) + len(images.y_val) == 7 and len(images.skipped) == 1
    again = load_image_folder(folder, image_size=32, val_split=0.25, seed=1)
    np.testing.assert_array_equal(images.y_val, again.y_val)
    other = tmp_path / "other"
    _write(other / "a" / "x.jpg", "RGB")
    _write(other / "c" / "x.jpg", "RGB")
    with pytest.raises(DataError, match="differ from training classes"):
        load_image_folder(folder, image_size=32, val_dir=other)


def test_a_per_class_sample_is_seeded_in_folder_order_and_caps_each_class(tmp_path):
    for name in ("a", "b"):
        for i in range(5 if name == "a" else 2):
            _write(tmp_path / "d" / name / f"{i}.png", "RGB")
    scan = scan_folder(tmp_path / "d")
    small = sample_per_class(scan, 3, seed=0)
    assert small.counts == {"a": 3, "b": 2} and list(small.files) == sorted(small.files)
    assert sample_per_class(scan, 3, seed=0) == small and set(small.files) <= set(scan.files)
    assert {sample_per_class(scan, 3, seed=s).files for s in range(6)} != {small.files}  # the seed picks
    images = load_image_folder(tmp_path / "d", image_size=16, val_split=0.2, seed=0, max_per_class=3)
    assert len(images.y_train) + len(images.y_val) == 5


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist.*one sub-folder of images per class"):
        scan_folder(tmp_path / "nowhere")


def test_one_class_is_refused(tmp_path):
    _write(tmp_path / "only" / "x.jpg", "RGB")
    with pytest.raises(DataError, match="only 'only'.*at least 2"):
        scan_folder(tmp_path)


def test_loose_images_without_classes_are_refused(tmp_path):
    _write(tmp_path / "x.jpg", "RGB")
    with pytest.raises(DataError, match="no class sub-folders and 1 loose images"):
        scan_folder(tmp_path)


def test_class_without_images_is_refused(tmp_path):
    _write(tmp_path / "a" / "x.jpg", "RGB")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.md").write_text("empty")
    with pytest.raises(DataError, match=r"Class folder\(s\) b .* hold no images"):
        scan_folder(tmp_path)


def test_class_whose_every_file_is_corrupt_is_refused(tmp_path):
    _write(tmp_path / "a" / "x.jpg", "RGB")
    _write(tmp_path / "a" / "y.jpg", "RGB")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="No image of class\\(es\\) b could be decoded"):
        load_image_folder(tmp_path, image_size=32)


def test_stratified_split_and_class_weights():
    labels = np.array([0] * 10 + [1] * 30)
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.bincount(labels[val]).tolist()) == [2, 6]
    assert set(train).isdisjoint(val) and len(train) + len(val) == 40
    weights = class_weights(labels, 2)
    assert weights[0] == pytest.approx(2.0) and weights[1] == pytest.approx(40 / 60)
    with pytest.raises(DataError, match="at least 2 per class"):
        stratified_split(np.array([0, 1, 1]), 0.5, 0)


def test_make_dataset_batches_casts_and_augments():
    from transferkit.data import AugmentConfig, make_dataset

    x = np.random.default_rng(0).integers(0, 255, (10, 16, 16, 3), dtype=np.uint8)
    y = np.arange(10)
    plain = list(make_dataset(x, y, batch_size=4))
    assert [b[0].shape[0] for b in plain] == [4, 4, 2] and plain[0][0].dtype.name == "float32"
    np.testing.assert_array_equal(plain[0][0].numpy(), x[:4].astype("float32"))
    shuffled = np.concatenate([b[1].numpy() for b in make_dataset(x, y, batch_size=4, shuffle=True, seed=1)])
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.tolist() != list(range(10))
    augmented = next(iter(make_dataset(x, y, batch_size=10, augment=AugmentConfig(flip="horizontal_and_vertical"))))
    assert augmented[0].shape == (10, 16, 16, 3)
    assert not np.allclose(augmented[0].numpy(), x.astype("float32"))


def test_augmented_views_are_the_images_then_seeded_copies():
    from transferkit.config import AUGMENT_PRESETS
    from transferkit.data import augmented_views

    x = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    views = augmented_views(x, AUGMENT_PRESETS["strong"], 3, seed=1, batch_size=2)
    assert views.shape == (15, 16, 16, 3) and views.dtype == np.uint8
    np.testing.assert_array_equal(views[:5], x)  # the first view is the images themselves
    assert not np.array_equal(views[5:10], x) and not np.array_equal(views[5:10], views[10:])
    np.testing.assert_array_equal(views, augmented_views(x, AUGMENT_PRESETS["strong"], 3, seed=1, batch_size=2))
    assert not np.array_equal(views, augmented_views(x, AUGMENT_PRESETS["strong"], 3, seed=2, batch_size=2))
    with pytest.raises(ValueError, match="at least 1"):
        augmented_views(x, AUGMENT_PRESETS["strong"], 0)


def test_a_class_table_reads_what_the_class_folders_read(sign_digits, tmp_path, monkeypatch):
    from transferkit.config import Recipe
    from transferkit.data import load_image_folder, load_recipe_data

    data = tmp_path / "digits"
    for digit in ("4", "5", "6"):
        (data / digit).mkdir(parents=True)
        for path in sorted((sign_digits / digit).iterdir())[:6]:
            shutil.copy(path, data / digit / path.name)
    scan = scan_folder(data)
    rows = [f"{Path(f).relative_to(data)},{scan.class_names[y]}" for f, y in zip(scan.files, scan.labels)]
    (tmp_path / "labels.csv").write_text("path,digit\n" + "\n".join(rows) + "\n")
    folders = load_image_folder(data, image_size=32, seed=1)
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path / "cache"))
    for stream in (False, True):
        recipe = Recipe(labels=str(tmp_path / "labels.csv"), seed=1, stream=stream)
        table, files = load_recipe_data(recipe, data, 32)
        assert table.task == "multiclass" and table.class_names == folders.class_names and len(files) == 18
        for name in ("x_train", "y_train", "x_val", "y_val"):
            np.testing.assert_array_equal(np.asarray(getattr(table, name)[:]), getattr(folders, name))
        assert table.task_for(None) == "multiclass"
    with pytest.raises(RecipeError, match="task multilabel does not fit"):
        folders.task_for("multilabel")
    with pytest.raises(RecipeError, match="binary needs exactly 2 classes; the data has 3"):
        folders.task_for("binary")  # one sigmoid on labels 0-2 would train silently wrong


def test_a_multilabel_table_splits_at_random_and_counts_images_per_label(sign_digits, tmp_path):
    from transferkit.data import load_label_table
    from transferkit.labels import read_labels

    picks = sorted((sign_digits / "8").iterdir())[:10]
    rows = [f"{p.name},{'a|b' if i % 3 == 0 else 'b'}" for i, p in enumerate(picks)]
    (tmp_path / "t.csv").write_text("path,tags\n" + "\n".join(rows) + "\n")
    images = load_label_table(read_labels(tmp_path / "t.csv", sign_digits / "8", "multilabel"), image_size=32,
                              val_split=0.3, seed=0)
    assert images.task == "multilabel" and images.y_train.shape == (7, 2) and images.y_val.shape == (3, 2)
    both = images.counts("train")["a"] + images.counts("val")["a"]
    assert both == 4 and images.counts("train")["b"] == 7 and not images.one_class_each
    with pytest.raises(RecipeError, match="task binary does not fit"):
        images.task_for("binary")
