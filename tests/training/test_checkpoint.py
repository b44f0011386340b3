"""Checkpointer: round trip by path, damaged bytes caught and skipped, moved arrays, the config."""

import glob
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxloss.training.checkpoint import Checkpointer, CheckpointError


def _state(seed):
    # An NNX State inside a dict, as the training state holds them.
    _, params = nnx.split(nnx.Linear(64, 64, rngs=nnx.Rngs(seed)))
    return {"params": params, "step": jnp.int32(seed)}


def _best(seed):
    return {"epoch": np.array([seed]), "test/accuracy": np.array([0.5 + seed / 10])}


def _save(checkpointer, epoch, **kwargs):
    history = [{"epoch": e, "train/loss": [1.0 / (e + 1)]} for e in range(epoch + 1)]
    kwargs.setdefault("data", {"step": 7 * (epoch + 1)})
    checkpointer.save(epoch, state=_state(epoch), best=_best(epoch), history=history, **kwargs)


def _damage(directory, epoch):
    """Flips 64 bytes in the middle of the largest file of array data (not metadata) of ``epoch``."""
    # OCDBT keeps the arrays' chunks in content-addressed files under ocdbt.process_<i>/d/.
    files = glob.glob(os.path.join(directory, str(epoch), "state", "ocdbt.process_*", "d", "*"))
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as file:
        file.seek(os.path.getsize(path) // 2)
        chunk = file.read(64)
        file.seek(-len(chunk), os.SEEK_CUR)
        file.write(bytes(byte ^ 0xFF for byte in chunk))


def _assert_restored(restored, epoch):
    got_epoch, state, best, history, data_state = restored
    assert got_epoch == epoch
    assert data_state == {"step": 7 * (epoch + 1)}
    want = _state(epoch)
    assert jax.tree.structure(state) == jax.tree.structure(want)
    for got, expected in zip(jax.tree.leaves(state), jax.tree.leaves(want), strict=True):
        assert isinstance(got, jax.Array)
        np.testing.assert_array_equal(got, expected)
    assert best.keys() == _best(epoch).keys()
    for key, value in _best(epoch).items():
        assert isinstance(best[key], np.ndarray)
        np.testing.assert_array_equal(best[key], value)
    assert [record["epoch"] for record in history] == list(range(epoch + 1))


def test_round_trip_in_a_relative_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpointer = Checkpointer("checkpoints")
    assert checkpointer.directory == str(tmp_path / "checkpoints")
    for epoch in range(3):
        _save(checkpointer, epoch)
    checkpointer.close()
    checkpointer = Checkpointer(tmp_path / "checkpoints")  # a fresh one reads them back
    assert checkpointer.latest_epoch() == 2
    _assert_restored(checkpointer.restore_latest(state=_state(9), best=_best(9)), 2)
    # restore() of a named epoch, as the loop calls it; max_to_keep=2 dropped epoch 0.
    _assert_restored((1, *checkpointer.restore(1, state=_state(9), best=_best(9))), 1)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    checkpointer.close()


def test_flipped_bytes_fall_back_to_the_previous_checkpoint(tmp_path, caplog):
    checkpointer = Checkpointer(tmp_path)
    _save(checkpointer, 0)
    _save(checkpointer, 1)
    _damage(tmp_path, 1)
    damaged = str(tmp_path / "1")
    # Orbax reads the flipped bytes back without complaint; the checksums catch them.
    with pytest.raises(
        CheckpointError, match=rf"{damaged} is corrupt: the checksums .* do not match state array"
    ):
        checkpointer.restore(1, state=_state(9), best=_best(9))
    with caplog.at_level(logging.WARNING):
        _assert_restored(checkpointer.restore_latest(state=_state(9), best=_best(9)), 0)
    assert damaged in caplog.text
    # The damaged epoch is gone, so the resumed run can save it again.
    assert checkpointer.latest_epoch() == 0
    _save(checkpointer, 1)
    _assert_restored(checkpointer.restore_latest(state=_state(9), best=_best(9)), 1)
    checkpointer.close()


def test_the_only_checkpoint_damaged_raises_naming_it_and_keeps_it(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    _save(checkpointer, 0)
    _damage(tmp_path, 0)
    with pytest.raises(CheckpointError, match=rf"{tmp_path / '0'} is corrupt"):
        checkpointer.restore_latest(state=_state(9), best=_best(9))
    assert checkpointer.latest_epoch() == 0
    checkpointer.close()


def test_arrays_moved_to_other_paths_are_refused_naming_them(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    saved = {"encoder": jnp.zeros(3), "decoder": jnp.ones(3)}
    checkpointer.save(0, state=saved, best=_best(0), history=[])
    renamed = {"encoder": jnp.zeros(3), "head": jnp.ones(3)}
    with pytest.raises(
        CheckpointError,
        match=r"only in the checkpoint: \['decoder'\]; only in this config: \['head'\]",
    ):
        checkpointer.restore(0, state=renamed, best=_best(0))
    checkpointer.close()


def test_config_saved_in_the_checkpoint_must_match_but_for_cosmetic_fields(tmp_path):
    config = {"seed": 0, "model": {"hidden_sizes": [16]}, "progress_bar": False}
    checkpointer = Checkpointer(tmp_path)
    _save(checkpointer, 0, config=config)
    other = {**config, "model": {"hidden_sizes": [32]}, "progress_bar": True, "stop_on_nan": False}
    with pytest.raises(CheckpointError, match=r"different config \(differences in: model\)"):
        checkpointer.restore_latest(state=_state(9), best=_best(9), config=other)
    assert checkpointer.latest_epoch() == 0  # a different config is not damage: nothing deleted
    cosmetic = {**config, "progress_bar": True, "log_every_steps": 5, "stop_on_nan": False}
    _assert_restored(
        checkpointer.restore_latest(state=_state(9), best=_best(9), config=cosmetic), 0
    )
    checkpointer.close()


def test_the_input_pipeline_state_is_checked_and_optional(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    _save(checkpointer, 0, data=None)  # a checkpoint without a pipeline state restores None
    assert checkpointer.restore(0, state=_state(9), best=_best(9))[3] is None
    _save(checkpointer, 1)
    path = os.path.join(tmp_path, "1", "data", "metadata")
    with open(path) as file:
        text = file.read()
    assert '"step": 14' in text
    with open(path, "w") as file:
        file.write(text.replace('"step": 14', '"step": 15'))
    with pytest.raises(CheckpointError, match="do not match the input pipeline state"):
        checkpointer.restore(1, state=_state(9), best=_best(9))
    checkpointer.close()
