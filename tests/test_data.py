import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from patchvae_tf import data
from patchvae_tf.config import DataConfig
from patchvae_tf.data import shapes
from patchvae_tf.errors import UserError


def _take(ds, n):
    return [{k: v.numpy() for k, v in ex.items()} for ex in ds.take(n)]


def test_shapes_deterministic_per_seed_and_split():
    a = _take(shapes.shapes_dataset("train", 4, 32, seed=7), 4)
    b = _take(shapes.shapes_dataset("train", 4, 32, seed=7), 4)
    c = _take(shapes.shapes_dataset("train", 4, 32, seed=8), 4)
    t = _take(shapes.shapes_dataset("test", 4, 32, seed=7), 4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    assert not np.array_equal(a[0]["image"], t[0]["image"])


def test_shapes_masks_match_images():
    for ex in _take(shapes.shapes_dataset("train", 40, 32, seed=0), 40):
        image, masks = ex["image"], ex["masks"]
        assert image.shape == (32, 32, 3) and masks.shape == (32, 32, 3)
        assert image.min() >= -1.0 and image.max() <= 1.0
        covered = masks.max(-1) > 0
        # At most one class per pixel (occlusion resolved), and something is drawn.
        assert (masks.sum(-1) <= 1).all() and covered.any()
        background = image[~covered]
        # Background is one colour in [-1, -0.2]; shapes are drawn in [0, 1].
        if background.size:
            assert np.allclose(background, background[0])
            assert background.max() <= -0.2 + 1e-6
        assert image[covered].min() >= -1e-6
        assert ex["label"] == np.argmax(masks.sum(axis=(0, 1)))


def test_shapes_kinds_label_counts_the_classes_shown():
    seen = set()
    for i in range(60):
        largest = shapes.make_example(tf.constant(i, tf.int64), 0, 32)
        kinds = shapes.make_example(tf.constant(i, tf.int64), 0, 32, label="kinds")
        np.testing.assert_array_equal(largest["image"].numpy(), kinds["image"].numpy())
        area = kinds["masks"].numpy().sum(axis=(0, 1))
        # A kind counts from 1% of the image (10.24 of 1,024 pixels) up.
        expected = int((area >= 10.24).sum()) - 1
        assert kinds["label"] == expected
        seen.add(expected)
    assert seen == {0, 1, 2}
    # By hand: one circle of 40 pixels, a 5-pixel triangle sliver and no square -> one kind;
    # grow the sliver to 11 pixels -> two kinds.
    masks = np.zeros([1, 32, 32, 3], np.float32)
    masks[0, :4, :10, 0] = 1
    masks[0, 10, :5, 1] = 1
    assert shapes._label(tf.constant(masks), "kinds").numpy().tolist() == [0]
    masks[0, 11, :6, 1] = 1
    assert shapes._label(tf.constant(masks), "kinds").numpy().tolist() == [1]
    assert shapes._label(tf.constant(masks), "largest").numpy().tolist() == [0]


@pytest.mark.parametrize("contrast", [0.65, 0.3])
def test_shapes_texture_darkens_each_class_by_its_pattern(contrast):
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    # 2-pixel bands every 4 pixels: circles by row, squares by column, triangles both.
    band_row, band_col = (rows // 2) % 2 == 1, (cols // 2) % 2 == 1
    dark_of = [band_row, band_row ^ band_col, band_col]
    for i in range(12):
        flat = shapes.make_example(tf.constant(i, tf.int64), 0, 32)
        tex = shapes.make_example(tf.constant(i, tf.int64), 0, 32, texture=True, contrast=contrast)
        masks = flat["masks"].numpy()
        np.testing.assert_array_equal(masks, tex["masks"].numpy())
        assert flat["label"] == tex["label"]
        unit_flat, unit_tex = (flat["image"].numpy() + 1) / 2, (tex["image"].numpy() + 1) / 2
        expected = unit_flat.copy()
        for k, dark in enumerate(dark_of):
            where = (masks[..., k] > 0) & dark
            expected[where] *= 1.0 - contrast
        np.testing.assert_allclose(unit_tex, expected, atol=1e-5)


def test_shapes_pipeline_shards_and_batches():
    source = data.get_source(DataConfig(shapes_train_size=64, shapes_test_size=16), 32)
    ds = data.input_dataset(source, "test", 8, training=False)
    batches = _take(ds, 3)
    assert len(batches) == 2 and batches[0]["image"].shape == (8, 32, 32, 3)
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
    shard = _take(data.input_dataset(source, "test", 4, training=False, input_context=ctx), 10)
    assert sum(b["image"].shape[0] for b in shard) == 8


def _write(path, mode, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    # Seeded from the path's bytes: hash() of a str changes from one run to the next.
    rng = np.random.default_rng(list(str(path).encode()))
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "P": 1}[mode]
    arr = rng.integers(0, 255, size=(size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(
        arr.squeeze(-1) if channels == 1 else arr, mode="L" if mode == "P" else mode
    )
    if mode == "P":
        img = img.convert("P")
    img.save(path)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "imgs"
    _write(root / "train" / "cat" / "a.png", "L")
    _write(root / "train" / "cat" / "b.png", "RGBA")
    _write(root / "train" / "dog" / "c.jpg", "RGB")
    _write(root / "train" / "dog" / "d.png", "P")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"not an image at all")
    _write(root / "test" / "cat" / "e.jpg", "RGB")
    _write(root / "test" / "dog" / "f.png", "RGB")
    return root


def test_folder_pipeline_converts_modes_and_skips_corrupt(image_folder, capsys):
    cfg = DataConfig(dataset=f"folder:{image_folder}")
    source = data.get_source(cfg, 16)
    assert "skipped 1 corrupt" in capsys.readouterr().out
    assert source.skipped == 1 and source.num_classes == 2
    assert source.sizes == {"train": 4, "test": 2}
    batch = next(iter(data.input_dataset(source, "train", 4, training=True)))
    assert batch["image"].shape == (4, 16, 16, 3)
    assert batch["image"].numpy().min() >= -1.0 and batch["image"].numpy().max() <= 1.0
    assert sorted(batch["label"].numpy().tolist()) == [0, 0, 1, 1]
    test = _take(data.input_dataset(source, "test", 8, training=False), 1)[0]
    assert test["image"].shape == (2, 16, 16, 3)


def test_folder_grey_image_becomes_equal_rgb_channels(tmp_path):
    root = tmp_path / "g"
    _write(root / "train" / "x" / "a.png", "L", size=(16, 16))
    source = data.get_source(DataConfig(dataset=f"folder:{root}"), 16)
    image = _take(data.input_dataset(source, "train", 1, training=False, repeat=False), 1)
    rgb = image[0]["image"][0]
    np.testing.assert_allclose(rgb[..., 0], rgb[..., 1])
    np.testing.assert_allclose(rgb[..., 0], rgb[..., 2])


def test_preprocess_resizes_then_centre_crops():
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 10:30] = 255  # the centre 20x20 is white
    out = data.preprocess_image(image, 10).numpy()
    assert out.shape == (10, 10, 3)
    # Antialiasing blends the black border into the outermost columns only.
    assert out[:, 1:-1].min() > 0.99 and out.min() > 0.5


def test_split_files(tmp_path):
    root = tmp_path / "indoor"
    for rel in ("bar/1.jpg", "bar/2.jpg", "kitchen/3.jpg"):
        _write(root / rel, "RGB")
    (tmp_path / "TrainImages.txt").write_text("bar/1.jpg\nkitchen/3.jpg\n")
    (tmp_path / "TestImages.txt").write_text("bar/2.jpg\n")
    cfg = DataConfig(
        dataset=f"folder:{root}",
        train_split_file=str(tmp_path / "TrainImages.txt"),
        test_split_file=str(tmp_path / "TestImages.txt"),
    )
    source = data.get_source(cfg, 8)
    assert source.sizes == {"train": 2, "test": 1} and source.num_classes == 2
    # The authors' Indoor67 VAE split: every image the test file does not list.
    _write(root / "kitchen" / "4.jpg", "RGB")
    unlisted = data.get_source(dataclasses.replace(cfg, train_split="all_but_test"), 8)
    assert unlisted.sizes == {"train": 3, "test": 1}
    (tmp_path / "TestImages.txt").write_text("bar/2.jpg\nbar/missing.jpg\n")
    with pytest.raises(UserError, match="missing.jpg"):
        data.get_source(cfg, 8)


def test_random_flip_is_an_option(tmp_path):
    root = tmp_path / "f"
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = 255  # left half white
    (root / "train" / "x").mkdir(parents=True)
    Image.fromarray(image).save(root / "train" / "x" / "a.png")
    source = data.get_source(DataConfig(dataset=f"folder:{root}"), 8)

    def left_halves(flip):
        ds = data.input_dataset(source, "train", 1, training=True, seed=0, flip=flip)
        return [float(b["image"][0, :, :4].numpy().mean()) for b in ds.take(40)]

    assert set(left_halves(False)) == {1.0}
    flipped = left_halves(True)
    assert set(flipped) == {1.0, -1.0}


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "holds no JPEG or PNG training images"),
        ("all_corrupt", "every training image is corrupt"),
        ("one_split_file", "give both --train_split_file and --test_split_file"),
        ("empty_split_file", "lists no images"),
    ],
)
def test_folder_errors(tmp_path, layout, message):
    root = tmp_path / "d"
    splits = {}
    if layout == "empty":
        (root / "train" / "cls").mkdir(parents=True)
    elif layout == "all_corrupt":
        (root / "train" / "cls").mkdir(parents=True)
        (root / "train" / "cls" / "a.jpg").write_bytes(b"not a jpeg")
    elif layout in ("one_split_file", "empty_split_file"):
        _write(root / "cls" / "a.png", "RGB")
        (tmp_path / "split.txt").write_text("\n" if layout == "empty_split_file" else "cls/a.png\n")
        splits = {"train_split_file": str(tmp_path / "split.txt")}
        if layout == "empty_split_file":
            splits["test_split_file"] = splits["train_split_file"]
    with pytest.raises(UserError, match=message) as err:
        data.get_source(DataConfig(dataset=f"folder:{root}", **splits), 32)
    assert "\n" not in str(err.value)


def test_tfds_through_mock_data():
    import tensorflow_datasets as tfds

    # mock_data's data_dir holds metadata only: --download runs its no-op preparation.
    with tfds.testing.mock_data(num_examples=12):
        source = data.get_source(DataConfig(dataset="mnist", download=True), 16)
        assert source.num_classes == 10
        batch = next(iter(data.input_dataset(source, "train", 4, training=True)))
        test = next(iter(data.input_dataset(source, "test", 4, training=False)))
    assert batch["image"].shape == (4, 16, 16, 3) and test["image"].shape == (4, 16, 16, 3)
    assert batch["label"].dtype == tf.int32
    assert -1.0 <= batch["image"].numpy().min() and batch["image"].numpy().max() <= 1.0


def _tfds_stream(source, seed, start, n, context=None):
    """n training examples of a pipeline resumed at ``start``, as (image bytes, label) pairs."""
    ds = source.readers["train"](context, seed, start)
    return [(ex["image"].tobytes(), int(ex["label"])) for ex in _take(ds, n)]


@pytest.mark.slow
def test_tfds_training_resumes_at_any_position_exactly(tiny_tfds):
    """The TFDS stream resumed at position p is the uninterrupted stream from p on: every
    epoch a new seeded order of all 37 examples, the same one when replayed.
    """
    from conftest import TINY_TFDS

    cfg = DataConfig(dataset=TINY_TFDS, data_dir=tiny_tfds, shuffle_buffer=8)
    source = data.get_source(cfg, 8)
    assert source.sizes == {"train": 37, "test": 5} and source.num_classes == 3
    full = _tfds_stream(source, 3, 0, 37 * 3)
    epochs = [full[i : i + 37] for i in (0, 37, 74)]
    every = {ex["image"].tobytes() for ex in _take(source.readers["train"](None, None), 37)}
    assert len(every) == 37
    for epoch in epochs:  # each epoch: every training example once
        assert {image for image, _ in epoch} == every
    assert epochs[0] != epochs[1] != epochs[2]
    assert _tfds_stream(source, 4, 0, 37) != epochs[0]  # the seed decides the order
    for start in (20, 37, 50):  # mid-epoch, an epoch boundary, the next epoch
        assert _tfds_stream(source, 3, start, 20) == full[start : start + 20], start
    # Two input pipelines: disjoint shares of the examples, each resumable on its own.
    shares = []
    for pid in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid)
        share = _tfds_stream(source, 3, 0, 30, context)
        assert _tfds_stream(source, 3, 11, 19, context) == share[11:]
        shares.append({image for image, _ in share})
    assert shares[0] | shares[1] == every and not shares[0] & shares[1]


def test_unknown_tfds_name_is_a_user_error():
    with pytest.raises(UserError, match="no_such_dataset"):
        data.get_source(DataConfig(dataset="no_such_dataset"), 32)


@pytest.mark.parametrize(
    ("name", "advice"),
    [("mnist", "pass --download to fetch"), ("imagenet2012", "downloads/manual")],
)
def test_unprepared_tfds_fails_fast_and_says_how_to_prepare(tmp_path, name, advice):
    import time

    cfg = DataConfig(dataset=name, data_dir=str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(UserError, match=f"'{name}' is not prepared in --data_dir") as err:
        data.get_source(cfg, 32)
    assert time.perf_counter() - start < 10  # TFDS's own download retries for ~3 minutes
    assert advice in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "downloads").exists()  # nothing was fetched


def test_download_flag_prepares_and_reports_failure_in_one_line(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    calls = []

    def offline(self, *args, **kwargs):
        calls.append(self.name)
        raise ConnectionError("Failed to connect to storage.googleapis.com\nretry 1 ...")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    cfg = DataConfig(dataset="mnist", data_dir=str(tmp_path), download=True)
    with pytest.raises(UserError, match="could not be prepared .*: Failed to connect") as err:
        data.get_source(cfg, 32)
    assert calls == ["mnist"] and "\n" not in str(err.value)


def test_class_folder_without_images_is_not_a_class(tmp_path):
    root = tmp_path / "f"
    _write(root / "train" / "cat" / "a.png", "RGB")
    _write(root / "train" / "dog" / "b.png", "RGB")
    (root / "train" / "empty").mkdir()
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    source = data.get_source(DataConfig(dataset=f"folder:{root}"), 8)
    assert source.num_classes == 2 and source.sizes == {"train": 2, "test": 0}


def test_huge_images_are_resized_and_decompression_bombs_skipped(tmp_path, monkeypatch, capsys):
    from PIL import Image as PILImage

    root = tmp_path / "big"
    _write(root / "train" / "a" / "large.png", "RGB", size=(3000, 2000))
    _write(root / "train" / "a" / "small.png", "RGB", size=(40, 30))
    source = data.get_source(DataConfig(dataset=f"folder:{root}"), 16)
    batch = _take(data.input_dataset(source, "train", 2, training=False), 1)[0]
    assert batch["image"].shape == (2, 16, 16, 3)
    # Past PIL's decompression-bomb limit (2x MAX_IMAGE_PIXELS) a file is refused as corrupt.
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1_000_000)
    source = data.get_source(DataConfig(dataset=f"folder:{root}"), 16)
    assert source.sizes["train"] == 1 and "skipped 1 corrupt" in capsys.readouterr().out


def _places_mock(unlabelled: set):
    """tfds.testing.mock_data for places365_small whose splits in ``unlabelled`` carry only
    TFDS's missing label, -1 (as its real test split does), and whose others carry label 7.
    """
    import tensorflow_datasets as tfds

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        label = -1 if str(split) in unlabelled else 7
        image = tf.zeros([40, 48, 3], tf.uint8)
        if decoders and "image" in decoders:  # SkipDecoding: the encoded bytes
            image = tf.io.encode_png(image)
        example = {"image": image, "label": tf.constant(label, tf.int64)}
        return tf.data.Dataset.from_tensors(example).repeat(6)

    return tfds.testing.mock_data(num_examples=6, as_dataset_fn=as_dataset)


def test_places_is_scored_on_its_labelled_validation_split():
    with _places_mock({"test"}):
        source = data.get_source(DataConfig(dataset="places365_small", download=True), 16)
        test = next(iter(data.input_dataset(source, "test", 6, training=False)))
    assert source.num_classes == 365 and source.unlabelled == ""
    # The test split's labels are all -1; validation's (7) are what recognition scores.
    assert test["label"].numpy().tolist() == [7] * 6


def test_evaluation_stops_when_no_split_has_labels(tmp_path):
    from conftest import tiny_config

    from patchvae_tf.config import EvalConfig
    from patchvae_tf.evaluation.setup import _plan

    with _places_mock({"test", "validation"}):
        source = data.get_source(DataConfig(dataset="places365_small", download=True), 16)
    assert "no labelled split" in source.unlabelled and "labels -1" in source.unlabelled
    cfg = tiny_config(str(tmp_path))
    for mode in ("all", "probe", "finetune"):
        with pytest.raises(UserError, match="places365_small.*no labelled split") as err:
            _plan(EvalConfig(mode=mode), cfg, source, None)
        assert "\n" not in str(err.value)
    # Sections that need no labels still run.
    assert _plan(EvalConfig(mode="visualize"), cfg, source, None)[0] == ("visualize",)
