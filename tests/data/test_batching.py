"""Epoch iterators: coverage, shuffling by (seed, epoch), resume, padding, device placement."""

import numpy as np
import pytest

from jaxloss import data
from tests.testing import run_on_devices


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


def test_train_batches_shuffle_drop_remainder_and_depend_on_seed_epoch():
    ds = _toy()
    batches = list(data.epoch_batches(ds, batch_size=5, epoch=2, seed=7, train=True))
    assert len(batches) == 4
    seen = np.concatenate([b["features"][:, 0] for b in batches])
    assert len(set(seen)) == 20 and all(b["mask"].all() for b in batches)
    assert batches[0]["labels"].dtype == np.int32 and batches[0]["labels"].shape == (5,)
    np.testing.assert_array_equal(
        batches[0]["labels"], batches[0]["features"][:, 0].astype(int) % 3
    )
    expected = np.random.default_rng([7, 2]).permutation(23)[:20]
    np.testing.assert_array_equal(seen, expected)
    other_epoch = np.concatenate(
        [
            b["features"][:, 0]
            for b in data.epoch_batches(ds, batch_size=5, epoch=3, seed=7, train=True)
        ]
    )
    assert not np.array_equal(seen, other_epoch)


def test_resume_sees_the_same_batches():
    ds = _toy()
    full = list(data.epoch_batches(ds, batch_size=4, epoch=1, seed=0, train=True))
    resumed = list(data.epoch_batches(ds, batch_size=4, epoch=1, seed=0, train=True, start_step=3))
    assert len(resumed) == len(full) - 3
    for a, b in zip(full[3:], resumed, strict=True):
        np.testing.assert_array_equal(a["features"], b["features"])
    with pytest.raises(ValueError, match="start_step"):
        list(data.epoch_batches(ds, batch_size=4, epoch=1, seed=0, train=True, start_step=9))


def test_eval_batches_cover_everything_in_order_with_mask():
    ds = _toy()
    batches = list(data.epoch_batches(ds, batch_size=5, epoch=0, seed=0, train=False))
    assert len(batches) == 5 and all(b["features"].shape == (5, 1) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    feats = np.concatenate([b["features"][:, 0] for b in batches])
    np.testing.assert_array_equal(feats[mask], np.arange(23))
    assert mask.sum() == 23 and not mask[23:].any()
    assert np.all(feats[~mask] == 0)


def test_too_large_train_batch_and_sharding_type_error():
    with pytest.raises(ValueError, match="exceeds"):
        list(data.epoch_batches(_toy(3), batch_size=4, epoch=0, seed=0, train=True))
    with pytest.raises(TypeError, match="NamedSharding"):
        list(data.epoch_batches(_toy(), batch_size=4, epoch=0, seed=0, train=True, sharding="data"))


def test_sharded_batches_on_four_devices():
    out = run_on_devices(
        """
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from jaxloss import data
        mesh = Mesh(np.array(jax.devices()), ("data",))
        ds = data.load("iris", split="train")
        sharding = NamedSharding(mesh, P("data"))
        batches = list(data.epoch_batches(ds, batch_size=8, epoch=0, seed=0, train=False,
                                          sharding=sharding))
        b = batches[-1]
        assert isinstance(b["features"], jax.Array) and b["features"].shape == (8, 4)
        assert len(b["labels"].sharding.device_set) == 4
        assert b["features"].addressable_shards[0].data.shape == (2, 4)
        assert int(sum(np.asarray(x["mask"]).sum() for x in batches)) == ds.num_examples
        try:
            next(data.epoch_batches(ds, batch_size=6, epoch=0, seed=0, train=True,
                                    sharding=sharding))
        except ValueError as e:
            print("ERR", e)
        """
    )
    assert "divisible by the 4 devices" in out
