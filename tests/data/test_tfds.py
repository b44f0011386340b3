"""tfds datasets through ``tfds.testing.mock_data``: no download, no prepared files."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from jaxloss import data  # noqa: E402

EXPECTED = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "svhn_cropped": ((32, 32, 3), 10),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mock_loading(name):
    shape, num_classes = EXPECTED[name]
    # USE_CODE builds the mock from the builder's code, so it needs no metadata files.
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        train = data.load(name, split="train", seed=1)
        val = data.load(name, split="validation", seed=1)
        test = data.load(name, split="test")
        raw = data.load(name, split="test", normalize=False)
    assert (train.num_examples, val.num_examples, test.num_examples) == (18, 2, 20)
    for ds in (train, val, test):
        assert ds.features.shape[1:] == shape and ds.features.dtype == np.float32
        assert ds.num_classes == num_classes and len(ds.class_names) == num_classes
        assert ds.labels.dtype == np.int32 and ds.labels.max() < num_classes
    assert 0.0 <= raw.features.min() and raw.features.max() <= 1.0
    mean = np.asarray(test.metadata["normalize_mean"], np.float32)
    std = np.asarray(test.metadata["normalize_std"], np.float32)
    np.testing.assert_allclose(test.features, (raw.features - mean) / std, rtol=1e-5, atol=1e-5)


def test_validation_is_carved_from_train_by_seed():
    with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
        full = data.load("cifar10", split="train", seed=0, normalize=False)
        n = full.num_examples + data.load("cifar10", split="validation", seed=0).num_examples
        a = data.load("cifar10", split="validation", seed=4)
        b = data.load("cifar10", split="validation", seed=4)
        c = data.load("cifar10", split="validation", seed=5)
    assert n == 30
    np.testing.assert_array_equal(a.features, b.features)
    assert not np.array_equal(a.features, c.features)


def test_cifar_constants_are_used():
    from jaxloss.data._constants import IMAGE_STATS

    assert IMAGE_STATS["cifar10"] == (data.CIFAR10_MEAN, data.CIFAR10_STD)
    assert IMAGE_STATS["cifar100"] == (data.CIFAR100_MEAN, data.CIFAR100_STD)


def test_unprepared_dataset_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tfds build mnist --file_format=array_record"):
        data.load("mnist", split="train", data_dir=str(tmp_path))
    try:
        data.load("mnist", split="train", data_dir=str(tmp_path))
    except FileNotFoundError as error:
        assert "pip install 'jaxloss[prepare]'" in str(error)
        assert error.__cause__ is None and error.__suppress_context__  # no chained tfds noise


def test_main_on_an_unprepared_dataset_fails_in_a_few_lines_and_writes_nothing(tmp_path):
    from tests.testing import REPO_ROOT, run_script

    workdir = tmp_path / "run"
    result = run_script(
        "main.py",
        "--config", f"{REPO_ROOT}/experiments/configs/mnist.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={tmp_path / 'no_data'}",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "tfds build mnist --file_format=array_record" in result.stderr
    assert len(result.stderr.splitlines()) < 10 and "Traceback" not in result.stderr
    assert not workdir.exists()


@pytest.mark.parametrize("name", ["mnist", "cifar100"])
def test_sources_yield_uint8_and_normalize_on_device_like_load(name):
    shape, _ = EXPECTED[name]
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        for split in ("train", "validation", "test"):
            source = data.load_source(name, split=split, seed=1)
            loaded = data.load(name, split=split, seed=1)
            batch = source.read(np.arange(len(source)))
            assert source.feature_shape == shape and batch["features"].dtype == np.uint8
            np.testing.assert_allclose(
                source.normalization(batch["features"]), loaded.features, rtol=1e-6, atol=1e-6
            )
            np.testing.assert_array_equal(batch["labels"], loaded.labels)
            np.testing.assert_array_equal(source.labels, loaded.labels)
            assert source.name == loaded.name and source.num_classes == loaded.num_classes
        raw = data.load_source(name, split="test", normalize=False)
        first = next(data.train_batches(raw, global_batch_size=4, seed=0))
    assert first["features"].dtype == np.uint8 and first["features"].shape == (4, *shape)
    assert raw.normalization == data.Normalization(255.0)
