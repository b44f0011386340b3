"""Steps per epoch (the pipeline's batches are tested in test_pipeline.py)."""

import numpy as np
import pytest

from jaxloss import data


def _toy(n=23):
    return data.Dataset(
        np.arange(n, dtype=np.float32)[:, None], np.arange(n) % 3, 3, tuple("abc"), "t"
    )


def test_steps_per_epoch():
    assert data.steps_per_epoch(23, 5, train=True) == 4
    assert data.steps_per_epoch(23, 5, train=False) == 5
    assert data.steps_per_epoch(20, 5, train=False) == 4
    with pytest.raises(ValueError, match="batch_size"):
        data.steps_per_epoch(10, 0, train=True)
