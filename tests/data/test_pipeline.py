"""The per-host streaming pipeline: sources, per-process rows, shuffles, resume, evaluation."""

import json
import pickle

import numpy as np
import pytest

from jaxloss import data
from tests.testing import run_on_devices

N, B = 50, 8  # 6 steps per epoch, 2 examples dropped


def _source(n=N):
    # Feature = example index, so every batch says which examples it holds.
    ds = data.Dataset(
        np.arange(n, dtype=np.float32)[:, None], np.arange(n) % 3, 3, tuple("abc"), "t"
    )
    return data.InMemorySource(ds)


def _global_batches_by_step(source, num_processes, num_steps, **kwargs):
    iterators = [
        data.train_batches(
            source, global_batch_size=B, process_index=p, process_count=num_processes, **kwargs
        )
        for p in range(num_processes)
    ]
    steps = []
    for _ in range(num_steps):
        rows = [next(it) for it in iterators]
        assert all(r["features"].shape[-2:] == (B // num_processes, 1) for r in rows)
        steps.append(np.concatenate([r["features"] for r in rows], axis=-2)[..., 0])
    return steps


def test_global_batch_does_not_depend_on_the_number_of_processes():
    source = _source()
    one = _global_batches_by_step(source, 1, 14, seed=3)  # into the third epoch
    for num_processes in (2, 4):
        many = _global_batches_by_step(source, num_processes, 14, seed=3)
        for step, (a, b) in enumerate(zip(one, many, strict=True)):
            np.testing.assert_array_equal(a, b, err_msg=f"step {step}, {num_processes} processes")
    # Step t of epoch e is rows [tB, (t+1)B) of the (seed, epoch) permutation.
    for epoch in range(2):
        order = np.random.default_rng([3, epoch]).permutation(N)
        for t in range(6):
            np.testing.assert_array_equal(one[6 * epoch + t], order[t * B : (t + 1) * B])


def test_hosts_read_disjoint_contiguous_blocks_with_matching_labels():
    source = _source()
    rows = [
        next(
            data.train_batches(
                source, global_batch_size=B, seed=0, process_index=p, process_count=4
            )
        )
        for p in range(4)
    ]
    order = np.random.default_rng([0, 0]).permutation(N)
    for p, batch in enumerate(rows):
        np.testing.assert_array_equal(batch["features"][:, 0], order[2 * p : 2 * p + 2])
        np.testing.assert_array_equal(batch["labels"], batch["features"][:, 0].astype(int) % 3)
        assert batch["labels"].dtype == np.int32
    assert len({int(x) for b in rows for x in b["features"][:, 0]}) == B


def test_shuffle_depends_on_seed_and_epoch_and_is_reproducible():
    source = _source()

    def epoch_orders(seed):
        it = data.train_batches(source, global_batch_size=B, seed=seed)
        steps = [next(it)["features"][:, 0] for _ in range(12)]
        return np.concatenate(steps[:6]), np.concatenate(steps[6:])

    first, second = epoch_orders(1)
    assert len(set(first)) == 48 and len(set(second)) == 48
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, epoch_orders(2)[0])
    np.testing.assert_array_equal(first, epoch_orders(1)[0])


def test_member_seeds_are_stacked():
    source = _source()
    stacked = next(data.train_batches(source, global_batch_size=B, seed=[4, 7], start_step=7))
    assert stacked["features"].shape == (2, B, 1) and stacked["labels"].shape == (2, B)
    for i, seed in enumerate((4, 7)):
        alone = next(data.train_batches(source, global_batch_size=B, seed=seed, start_step=7))
        np.testing.assert_array_equal(stacked["features"][i], alone["features"])
        np.testing.assert_array_equal(stacked["labels"][i], alone["labels"])


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_inside_an_epoch_gives_the_same_batches(prefetch):
    source = _source()
    kwargs = dict(
        global_batch_size=B, seed=[5, 6], prefetch=prefetch, process_index=1, process_count=2
    )
    it = data.train_batches(source, **kwargs)
    for _ in range(8):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint keeps
    assert state == {"step": 8}
    expected = [next(it)["features"] for _ in range(6)]
    resumed = data.train_batches(source, **kwargs)
    next(resumed)
    resumed.set_state(state)
    np.testing.assert_array_equal(np.stack([next(resumed)["features"] for _ in range(6)]), expected)
    from_step = data.train_batches(source, start_step=8, **kwargs)
    np.testing.assert_array_equal(
        np.stack([next(from_step)["features"] for _ in range(6)]), expected
    )


@pytest.mark.parametrize("prefetch", [0, 2])
def test_items_of_several_steps_stack_consecutive_batches(prefetch):
    source = _source()
    kwargs = dict(global_batch_size=B, seed=[5, 6], prefetch=prefetch)
    single = data.train_batches(source, start_step=3, **kwargs)
    expected = np.stack([next(single)["labels"] for _ in range(9)])  # across an epoch end
    grouped = data.train_batches(source, start_step=3, steps_per_item=3, **kwargs)
    items = [next(grouped) for _ in range(3)]
    assert items[0]["features"].shape == (3, 2, B, 1) and items[0]["labels"].shape == (3, 2, B)
    np.testing.assert_array_equal(np.concatenate([i["labels"] for i in items]), expected)
    assert grouped.get_state() == {"step": 12}
    grouped.set_state({"step": 6})
    np.testing.assert_array_equal(next(grouped)["labels"], expected[3:6])
    with pytest.raises(ValueError, match="multiple of steps_per_item"):
        grouped.set_state({"step": 7})
    with pytest.raises(ValueError, match="steps_per_item"):
        data.train_batches(source, steps_per_item=0, **kwargs)
    one = next(data.train_batches(source, start_step=3, steps_per_item=1, **kwargs))
    np.testing.assert_array_equal(one["labels"], expected[:1])  # G = 1 keeps the step axis


def test_worker_processes_give_the_same_batches():
    source = _source()
    with data.train_batches(source, global_batch_size=B, seed=2, start_step=4) as it:
        expected = [next(it)["features"] for _ in range(5)]
    with data.train_batches(
        source, global_batch_size=B, seed=2, start_step=4, worker_count=2
    ) as it:
        got = [next(it)["features"] for _ in range(5)]
        assert it.get_state() == {"step": 9}
    np.testing.assert_array_equal(np.stack(got), np.stack(expected))


@pytest.mark.parametrize("num_processes", [1, 2, 4])
def test_eval_batches_cover_the_split_once_in_order(num_processes):
    n = 23
    source = _source(n)
    per_host = [
        list(
            data.eval_batches(
                source, global_batch_size=B, process_index=p, process_count=num_processes
            )
        )
        for p in range(num_processes)
    ]
    assert {len(batches) for batches in per_host} == {3}
    features, labels, mask = (
        np.concatenate(
            [np.concatenate([host[t][key] for host in per_host]) for t in range(3)]
        ).reshape(3 * B, -1)[:, 0]
        for key in ("features", "labels", "mask")
    )
    np.testing.assert_array_equal(mask, np.arange(3 * B) < n)
    np.testing.assert_array_equal(features[:n], np.arange(n))
    np.testing.assert_array_equal(labels[:n], np.arange(n) % 3)
    assert not features[n:].any() and not labels[n:].any()


def test_argument_errors():
    source = _source()
    with pytest.raises(ValueError, match="divisible by the 3 processes"):
        data.train_batches(source, global_batch_size=B, seed=0, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="exceeds the 50 examples"):
        data.train_batches(source, global_batch_size=64, seed=0)
    with pytest.raises(ValueError, match="process_index"):
        data.eval_batches(source, global_batch_size=B, process_index=2, process_count=2)


def test_array_record_source_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 30)
    path = str(tmp_path / "toy.array_record")
    data.write_array_record(path, images, labels)
    source = data.ArrayRecordSource(path, feature_shape=(4, 4, 3), num_classes=10, name="toy")
    assert len(source) == 30 and source.labels.dtype == np.int32
    np.testing.assert_array_equal(source.labels, labels)
    batch = source.read([7, 2, 7])
    assert batch["features"].dtype == np.uint8
    np.testing.assert_array_equal(batch["features"], images[[7, 2, 7]])
    # Worker processes receive the source pickled.
    again = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(again[29]["features"], images[29])
    with pytest.raises(IndexError):
        source.read([30])


def test_normalization_matches_the_host_arithmetic():
    images = np.random.default_rng(1).integers(0, 256, (5, 2, 2, 3), dtype=np.uint8)
    mean, std = data.CIFAR10_MEAN, data.CIFAR10_STD
    norm = data.Normalization(255.0, mean, std)
    host = (images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(
        std, np.float32
    )
    import jax

    np.testing.assert_allclose(jax.jit(norm)(images), host, rtol=1e-6, atol=1e-6)
    assert hash(norm) == hash(data.Normalization(255.0, mean, std))
    with pytest.raises(ValueError, match="both"):
        data.Normalization(255.0, mean=mean)


def test_global_batch_on_four_devices():
    out = run_on_devices(
        """
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from jaxloss import data
        mesh = Mesh(np.array(jax.devices()), ("data",))
        source = data.load_source("iris", split="train")
        it = data.train_batches(source, global_batch_size=8, seed=[0, 1])
        local = next(it)
        batch = data.global_batch(local, NamedSharding(mesh, P(None, "data")))
        assert batch["features"].shape == (2, 8, 4), batch["features"].shape
        assert batch["features"].addressable_shards[1].data.shape == (2, 2, 4)
        np.testing.assert_array_equal(np.asarray(batch["labels"]), local["labels"])
        ev = next(data.eval_batches(source, global_batch_size=8))
        ev = data.global_batch(ev, NamedSharding(mesh, P("data")))
        assert ev["mask"].shape == (8,) and len(ev["mask"].sharding.device_set) == 4
        try:
            data.global_batch(local, NamedSharding(mesh, P()))
        except ValueError as e:
            print("ERR", e)
        """
    )
    assert "exactly one axis over 'data'" in out


def test_benchmark_script_reports_pipeline_rates(tmp_path):
    from tests.testing import run_script

    path = tmp_path / "rows.json"
    result = run_script(
        "benchmark_input.py",
        "--num_examples=300", "--batch_size=32", "--batches=3", "--warmup=1", "--workers=0",
        "--model_steps=0", f"--json={path}",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(path.read_text())
    assert [r["what"] for r in rows] == ["pipeline, 0 worker processes"]
    assert rows[0]["images_per_s"] > 0 and "| pipeline, 0 worker processes" in result.stdout
