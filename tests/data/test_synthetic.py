"""The teacher problem: labels from a fixed random linear teacher, reproducible, split streams."""

import numpy as np
import pytest

from jaxloss import data

SMALL = dict(num_classes=40, num_features=6, train_examples=3000, eval_examples=500)


def test_noiseless_labels_are_the_teachers_argmax():
    ds = data.teacher_dataset("train", seed=3, input_noise=0.0, **SMALL)
    # The teacher, drawn independently from the documented recipe.
    teacher = np.random.default_rng([3, 0]).standard_normal((6, 40))
    teacher /= np.linalg.norm(teacher, axis=0)
    np.testing.assert_array_equal(ds.labels, np.argmax(ds.features @ teacher, axis=1))
    assert ds.features.dtype == np.float32 and ds.labels.dtype == np.int32
    assert ds.num_classes == 40 and len(ds.class_names) == 40


def test_noise_keeps_the_teacher_informative_but_imperfect():
    ds = data.teacher_dataset("test", seed=0, input_noise=0.5, **SMALL)
    teacher = np.random.default_rng([0, 0]).standard_normal((6, 40))
    teacher /= np.linalg.norm(teacher, axis=0)
    scores = ds.features @ teacher
    top5 = np.argsort(-scores, axis=1)[:, :5]
    top5_accuracy = np.mean(np.any(top5 == ds.labels[:, None], axis=1))
    assert 5 / 40 < top5_accuracy < 1.0
    # Every class appears (unit columns): the problem really has many classes.
    assert len(np.unique(ds.labels)) == 40


def test_splits_are_reproducible_and_distinct():
    a = data.teacher_dataset("validation", seed=1, **SMALL)
    b = data.teacher_dataset("validation", seed=1, **SMALL)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    test = data.teacher_dataset("test", seed=1, **SMALL)
    assert not np.allclose(a.features, test.features)
    source = data.load_source("teacher", split="validation", seed=1, **SMALL)
    np.testing.assert_array_equal(source.read(np.arange(5))["labels"], a.labels[:5])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_classes"):
        data.teacher_dataset("train", num_classes=1)
    with pytest.raises(ValueError, match="input_noise"):
        data.teacher_dataset("train", input_noise=-1.0, **SMALL)
    with pytest.raises(ValueError, match="split must be one of"):
        data.teacher_dataset("dev", **SMALL)
    with pytest.raises(ValueError, match="digits takes no options, got num_classes"):
        data.load_source("digits", split="train", num_classes=5)
