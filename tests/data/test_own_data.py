"""The user's own data: a .npz, an ImageFolder tree, ArrayRecord files with their schema, and
sources from arrays, end to end through train_and_evaluate; the converter; bad files refused
before the workdir gets any file."""

import hashlib
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from sklearn.datasets import load_digits

from jaxloss import data
from jaxloss.data import convert
from jaxloss.training import CheckpointError, ConfigError, train_and_evaluate
from jaxloss.training.models import build_model
from tests.training.tiny import tiny_config

CLASSES = ("0-zero", "1-one", "2-two")  # sorted, as ImageFolder orders classes
PER_CLASS = {"train": 30, "test": 10}


def _images():
    """Real 8x8 digit images of classes 0-2 as uint8 (H, W, 1), per split, ordered by class."""
    digits = load_digits()
    splits, start = {}, {c: 0 for c in range(3)}
    for split, n in PER_CLASS.items():
        xs, ys = [], []
        for c in range(3):
            rows = np.flatnonzero(digits.target == c)[start[c] : start[c] + n]
            start[c] += n
            xs.append((digits.images[rows] * 15).astype(np.uint8)[..., None])
            ys.append(np.full(n, c))
        splits[split] = (np.concatenate(xs), np.concatenate(ys))
    return splits


def _write_npz(path, arrays):
    np.savez(path, **arrays)
    return str(path)


def _write_image_folder(root, splits):
    for split, (x, y) in splits.items():
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0]).save(folder / f"{i:04d}.png")
    return str(root)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same examples as a .npz, an ImageFolder tree and the converter's ArrayRecord output."""
    root = tmp_path_factory.mktemp("own")
    splits = _images()
    arrays = {
        "x_train": splits["train"][0],
        "y_train": splits["train"][1],
        "x_test": splits["test"][0],
        "y_test": splits["test"][1],
        "class_names": np.asarray(CLASSES),
    }
    paths = {
        "npz": _write_npz(root / "digits3.npz", arrays),
        "image_folder": _write_image_folder(root / "digits3", splits),
    }
    paths["array_record"] = str(root / "digits3_ar")
    convert.convert(paths["npz"], paths["array_record"], chunk_size=16)
    return paths, arrays


def _config(name, **overrides):
    config = tiny_config(**{"num_epochs": 1, "batch_size": 16, "eval_batch_size": 32, **overrides})
    config.data.name = name
    return config


def _sha(labels):
    return hashlib.sha256(np.asarray(labels, "<i4").tobytes()).hexdigest()


@pytest.mark.parametrize("kind", ["npz", "image_folder", "array_record"])
def test_each_format_trains_and_config_json_records_path_and_fingerprint(files, kind, tmp_path):
    paths, arrays = files
    result = train_and_evaluate(_config(paths[kind]), str(tmp_path))
    assert result["class_names"] == CLASSES
    # 30 per class, 10 % of each carved for validation.
    np.testing.assert_array_equal(result["train_class_counts"], [27, 27, 27])
    assert np.all(np.isfinite(result["best"]["test/accuracy"]))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["name"] == paths[kind]
    fingerprint = saved["data_fingerprint"]
    assert {s: f["num_examples"] for s, f in fingerprint.items()} == {
        "train": 81,
        "validation": 9,
        "test": 30,
    }
    assert fingerprint["test"]["labels_sha256"] == _sha(arrays["y_test"])


def test_formats_give_the_same_examples_and_standardization(files):
    paths, arrays = files
    opened = {kind: data.load_splits(path, seed=3) for kind, path in paths.items()}
    for split in ("train", "validation", "test"):
        reference = opened["npz"][split]
        want = reference.read(np.arange(len(reference)))
        for kind in ("image_folder", "array_record"):
            source = opened[kind][split]
            got = source.read(np.arange(len(source)))
            assert source.feature_dtype == np.uint8 and source.feature_shape == (8, 8, 1)
            np.testing.assert_array_equal(got["features"], want["features"], err_msg=kind)
            np.testing.assert_array_equal(got["labels"], want["labels"], err_msg=kind)
            assert source.normalization == reference.normalization, kind
    np.testing.assert_array_equal(
        opened["npz"]["test"].read(np.arange(30))["features"], arrays["x_test"]
    )
    # Standardized with the carved train split's own statistics (float64 NumPy as the oracle).
    train = opened["npz"]["train"].read(np.arange(81))["features"] / 255.0
    normalization = opened["npz"]["train"].normalization
    assert normalization.divisor == 255.0
    np.testing.assert_allclose(normalization.mean, [train.mean()], rtol=1e-12)
    np.testing.assert_allclose(normalization.std, [train.std()], rtol=1e-12)


def test_converter_writes_the_schema_and_refuses_a_used_destination(files, tmp_path, capsys):
    paths, arrays = files
    destination = tmp_path / "from_folder"
    assert convert.main([paths["image_folder"], str(destination), "--chunk_size", "7"]) == 0
    schema = data.read_schema(str(destination))
    assert schema["feature_shape"] == [8, 8, 1] and schema["feature_dtype"] == "uint8"
    assert schema["class_names"] == list(CLASSES) and schema["num_classes"] == 3
    assert {s: e["num_examples"] for s, e in schema["splits"].items()} == {"train": 90, "test": 30}
    train = data.ArrayRecordSource(
        str(destination / "train.array_record"), feature_shape=(8, 8, 1), num_classes=3
    )
    np.testing.assert_array_equal(train.read(np.arange(90))["features"], arrays["x_train"])
    assert convert.main([paths["npz"], str(destination)]) == 1
    assert "is not an empty directory" in capsys.readouterr().err


def test_splits_from_python_train_and_config_json_records_them(files, tmp_path):
    _, arrays = files
    splits = data.from_arrays(
        arrays["x_train"].reshape(90, -1).astype(np.float64),
        arrays["y_train"],
        arrays["x_test"].reshape(30, -1).astype(np.float64),
        arrays["y_test"],
        class_names=CLASSES,
        seed=1,
        name="mine",
    )
    # Float tables are standardized per feature with the train split's statistics.
    train = splits["train"].read(np.arange(len(splits["train"])))["features"].astype(np.float64)
    np.testing.assert_allclose(splits["train"].normalization.mean, train.mean(0), atol=1e-9)
    result = train_and_evaluate(_config("digits"), str(tmp_path), splits=splits)
    assert result["class_names"] == CLASSES
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["name"] is None
    assert "mine/train" in saved["data"]["sources"]["train"]
    assert saved["data_fingerprint"]["test"]["labels_sha256"] == _sha(arrays["y_test"])


def test_grey_images_without_channel_train_and_image_models_take_them(files, tmp_path):
    _, arrays = files
    path = _write_npz(
        tmp_path / "grey.npz",
        {**arrays, "x_train": arrays["x_train"][..., 0], "x_test": arrays["x_test"][..., 0]},
    )
    result = train_and_evaluate(_config(path), str(tmp_path / "run"))  # the MLP flattens
    assert np.all(np.isfinite(result["best"]["test/nll"]))
    # Image models take (H, W) images with a channel axis added: the same network as on (H, W, 1).
    config = _config(path).model
    config.name = "cnn"
    x = arrays["x_test"][:4].astype(np.float32)
    grey = build_model(config, 3, (8, 8), nnx.Rngs(0))
    with_channel = build_model(config, 3, (8, 8, 1), nnx.Rngs(0))
    np.testing.assert_allclose(
        grey(x[..., 0], train=False), with_channel(x, train=False), rtol=1e-6, atol=1e-6
    )


@pytest.mark.slow  # ~25 s: compiling the CNN's train step
def test_an_image_model_is_one_config_field(files, tmp_path):
    paths, _ = files
    config = _config(paths["image_folder"])
    config.model.name = "cnn"  # BatchNorm statistics update inside the compiled step
    result = train_and_evaluate(config, str(tmp_path))
    assert np.all(np.isfinite(result["best"]["test/nll"]))


def test_resume_refuses_changed_data(files, tmp_path):
    _, arrays = files
    path = _write_npz(tmp_path / "d.npz", arrays)
    workdir = str(tmp_path / "run")
    first = train_and_evaluate(_config(path), workdir)
    # The same data again: the finished run's results, nothing refused.
    again = train_and_evaluate(_config(path), workdir)
    assert again["summary"] == first["summary"]
    _write_npz(tmp_path / "d.npz", dict(arrays, y_test=np.roll(arrays["y_test"], 1)))
    with pytest.raises(CheckpointError, match=r"differences in: data_fingerprint\)"):
        train_and_evaluate(_config(path), workdir)


def _bad_npz(tmp_path, arrays, **changes):
    return _write_npz(tmp_path / "bad.npz", {**arrays, **changes})


def _bad_image_folder(tmp_path, *, drop=None, odd=None):
    root = tmp_path / "tree"
    splits = _images()
    if drop:
        splits.pop(drop)
    _write_image_folder(root, splits)
    if odd:
        Image.fromarray(np.zeros((9, 8), np.uint8)).save(root / odd)
    return str(root), root / odd if odd else None


def _bad_array_record(tmp_path, files, *, truncate=False, dtype=None):
    paths, _ = files
    root = tmp_path / "ar"
    convert.convert(paths["npz"], str(root))
    if truncate:
        raw = (root / "test.array_record").read_bytes()
        (root / "test.array_record").write_bytes(raw[: len(raw) // 2])
    if dtype:
        schema = json.loads((root / "schema.json").read_text())
        schema["feature_dtype"] = dtype
        (root / "schema.json").write_text(json.dumps(schema))
    return str(root)


BAD = {
    "bad label": (
        lambda tmp, files: _bad_npz(tmp, files[1], y_test=np.r_[files[1]["y_test"][:-1], 7]),
        r"label 7 of example 29 of y_test in .*bad\.npz is outside \[0, 3\)",
    ),
    "mixed shapes (npz)": (
        lambda tmp, files: _bad_npz(tmp, files[1], x_test=np.zeros((30, 8, 7, 1), np.uint8)),
        r"test split .* has feature_shape \(8, 7, 1\) where the train split has \(8, 8, 1\)",
    ),
    "mixed shapes (image folder)": (
        lambda tmp, files: _bad_image_folder(tmp, odd="test/1-one/odd.png")[0],
        r"odd\.png is a \(9, 8, 1\) image but .* is \(8, 8, 1\)",
    ),
    "empty split": (
        lambda tmp, files: _bad_npz(
            tmp, files[1], x_test=np.zeros((0, 8, 8, 1), np.uint8), y_test=np.zeros(0, int)
        ),
        r"the test split of .*bad\.npz \(bad/test\) holds no examples",
    ),
    "wrong dtype (labels)": (
        lambda tmp, files: _bad_npz(tmp, files[1], y_train=files[1]["y_train"] * 1.0),
        r"y_train in .*bad\.npz must be integer labels \(N,\), got float64",
    ),
    "wrong dtype (schema)": (
        lambda tmp, files: _bad_array_record(tmp, files, dtype="float32"),
        r"train\.array_record holds records of 64 feature bytes, but feature_shape=\(8, 8, 1\) "
        r"of float32 needs 256",
    ),
    "truncated file": (
        lambda tmp, files: _bad_array_record(tmp, files, truncate=True),
        r"test\.array_record cannot be read as an ArrayRecord file \(truncated or damaged\?\)",
    ),
    "missing split (npz)": (
        lambda tmp, files: _write_npz(
            tmp / "bad.npz", {k: v for k, v in files[1].items() if k != "x_test"}
        ),
        r"x_test is missing in .*bad\.npz",
    ),
    "missing split (image folder)": (
        lambda tmp, files: _bad_image_folder(tmp, drop="test")[0],
        r"tree/test is missing: an ImageFolder tree needs",
    ),
    "no such path": (
        lambda tmp, files: str(tmp / "nothing.npz"),
        r"unknown dataset .*nothing\.npz'; available: digits, .* or the path of your own data",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_fail_with_their_message_before_the_workdir_gets_a_file(files, tmp_path, case):
    make, message = BAD[case]
    path = make(tmp_path, files)
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(_config(path), str(workdir))
    assert not workdir.exists() or not any(workdir.iterdir())


def test_bad_splits_from_python_are_refused(files):
    _, arrays = files
    splits = data.from_arrays(
        arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
    )
    with pytest.raises(ValueError, match=r"splits must map exactly train, validation, test"):
        data.check_splits({"train": splits["train"], "test": splits["test"]})
    other = data.from_arrays(
        arrays["x_train"][:, :4], arrays["y_train"], arrays["x_test"][:, :4], arrays["y_test"]
    )
    with pytest.raises(ValueError, match=r"the test split of splits has feature_shape \(4, 8, 1\)"):
        data.check_splits({**splits, "test": other["test"]})
    with pytest.raises(ValueError, match=r"normalization .* differs from the train split's"):
        data.check_splits(
            {**splits, "test": data.ArraySource(arrays["x_test"], arrays["y_test"], num_classes=3)}
        )
    with pytest.raises(ValueError, match=r"label 5 of example 0 of y_test is outside \[0, 3\)"):
        data.from_arrays(
            arrays["x_train"], arrays["y_train"], arrays["x_test"], np.r_[5, arrays["y_test"][1:]]
        )


def test_load_materializes_load_source_for_paths_and_registered_names(files):
    paths, arrays = files
    test = data.load(paths["npz"], split="test")
    normalization = data.load_source(paths["npz"], split="test").normalization
    scaled = arrays["x_test"].astype(np.float64) / 255.0
    want = (scaled - normalization.mean[0]) / normalization.std[0]
    np.testing.assert_allclose(test.features, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(test.labels, arrays["y_test"])
    assert test.class_names == CLASSES and test.name == "digits3/test"
    digits = data.load_source("digits", split="validation", seed=2)
    np.testing.assert_array_equal(
        data.load("digits", split="validation", seed=2).features,
        digits.read(np.arange(len(digits)))["features"],
    )


def test_normalization_on_the_host_matches_the_device():
    x = np.random.default_rng(0).integers(0, 256, (16, 4, 4, 3), dtype=np.uint8)
    norm = data.Normalization(255.0, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
    host = norm(x)
    assert isinstance(host, np.ndarray) and host.dtype == np.float32
    np.testing.assert_allclose(host, np.asarray(norm(jnp.asarray(x))), rtol=1e-6, atol=1e-6)
