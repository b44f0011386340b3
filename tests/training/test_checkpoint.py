"""Checkpointer: round trip by path, damaged bytes caught and skipped, missing items, moved arrays,
the config, sharded checksums, a kill during an asynchronous save."""

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxloss.training.checkpoint import _SEEDS, Checkpointer, CheckpointError, _checksums
from tests.testing import REPO_ROOT, run_on_devices


def _state(seed):
    # An NNX State inside a dict, as the training state holds them.
    _, params = nnx.split(nnx.Linear(64, 64, rngs=nnx.Rngs(seed)))
    return {"params": params, "step": jnp.int32(seed)}


def _best(seed):
    return {"epoch": np.array([seed]), "test/accuracy": np.array([0.5 + seed / 10])}


def _save(checkpointer, epoch, **kwargs):
    history = [{"epoch": e, "train/loss": [1.0 / (e + 1)]} for e in range(epoch + 1)]
    kwargs.setdefault("data", {"step": 7 * (epoch + 1)})
    kwargs.setdefault("config", {"seed": 0})
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
    assert checkpointer.latest_epoch() == 1  # waits for the asynchronous write
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
    assert checkpointer.latest_epoch() == 0
    _damage(tmp_path, 0)
    with pytest.raises(CheckpointError, match=rf"{tmp_path / '0'} is corrupt"):
        checkpointer.restore_latest(state=_state(9), best=_best(9))
    assert checkpointer.latest_epoch() == 0
    checkpointer.close()


def test_arrays_moved_to_other_paths_are_refused_naming_them(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    saved = {"encoder": jnp.zeros(3), "decoder": jnp.ones(3)}
    checkpointer.save(0, state=saved, best=_best(0), history=[], config={}, data={})
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


def test_the_input_pipeline_state_is_checked(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    _save(checkpointer, 1)
    checkpointer.close()
    path = os.path.join(tmp_path, "1", "data", "metadata")
    with open(path) as file:
        text = file.read()
    assert '"step": 14' in text
    with open(path, "w") as file:
        file.write(text.replace('"step": 14', '"step": 15'))
    checkpointer = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="do not match the input pipeline state"):
        checkpointer.restore(1, state=_state(9), best=_best(9))
    checkpointer.close()


@pytest.mark.parametrize("item", ["config", "data", "checksums", "state"])
def test_a_checkpoint_missing_an_item_is_damaged(tmp_path, item, caplog):
    config = {"seed": 0}
    checkpointer = Checkpointer(tmp_path)
    _save(checkpointer, 0, config=config)
    _save(checkpointer, 1, config=config)
    checkpointer.close()
    shutil.rmtree(tmp_path / "1" / item)
    checkpointer = Checkpointer(tmp_path)
    # Without its config the checkpoint could not be checked against another run's config: it
    # is never restored, not even under a different config.
    with pytest.raises(CheckpointError, match=rf"{tmp_path / '1'} is damaged: it lacks its {item}"):
        checkpointer.restore(1, state=_state(9), best=_best(9), config={"seed": 1})
    with caplog.at_level(logging.WARNING):
        _assert_restored(
            checkpointer.restore_latest(state=_state(9), best=_best(9), config=config), 0
        )
    assert f"lacks its {item}" in caplog.text
    shutil.rmtree(tmp_path / "0" / item)
    with pytest.raises(CheckpointError, match="No checkpoint .* is intact"):
        checkpointer.restore_latest(state=_state(9), best=_best(9), config=config)
    checkpointer.close()


def _reference_checksum(array: np.ndarray) -> str:
    """The checksum by its definition, in Python integers: each 32-bit word w at (flat) index i
    adds mix(w ^ mix(i + seed)) mod 2**32, per seed."""

    def mix(x):
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & 0xFFFFFFFF
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & 0xFFFFFFFF
        return x ^ (x >> 16)

    array = np.ascontiguousarray(array)
    size = array.dtype.itemsize
    raw = array.tobytes()
    step = min(size, 4)
    words = [int.from_bytes(raw[i : i + step], "little") for i in range(0, len(raw), step)]
    lanes = [
        sum(mix(w ^ mix((i + seed) & 0xFFFFFFFF)) for i, w in enumerate(words)) for seed in _SEEDS
    ]
    return "".join(f"{lane % 2**32:08x}" for lane in lanes)


def test_checksums_match_their_definition_on_the_host():
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.normal(size=(3, 5)).astype(np.float32),
        "f64": rng.normal(size=(4,)),
        "i64": np.array([-1, 7, 2**40]),
        "bool": np.array([True, False, True]),
        "u8": np.arange(5, dtype=np.uint8),
        "scalar": np.float32(2.5),
    }
    got = _checksums(arrays)
    assert got == {key: _reference_checksum(np.asarray(value)) for key, value in arrays.items()}
    # One flipped bit, or two values swapped, changes the checksum.
    flipped = arrays["f32"].copy()
    flipped.view(np.uint32)[1, 2] ^= 1 << 7
    swapped = arrays["f32"].copy()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]
    assert len({got["f32"], *_checksums({"a": flipped, "b": swapped}).values()}) == 3


def test_checksums_of_sharded_arrays_are_computed_on_their_devices_and_match_the_host():
    # Each device sums its own shard's terms: the result equals the host's for every layout,
    # and no array is gathered (the compiled checksum holds no all-gather, only a reduction).
    out = run_on_devices(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from jaxloss.training import checkpoint

        mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
        rng = np.random.default_rng(1)
        host = {
            "rows": rng.normal(size=(8, 6)).astype(np.float32),
            "classes": rng.normal(size=(3, 8)).astype(np.float32),
            "both": rng.integers(-9, 9, size=(4, 8)).astype(np.int32),
            "replicated": rng.normal(size=(5,)).astype(np.float32),
            "half": rng.normal(size=(4, 4)).astype(jnp.bfloat16),
        }
        specs = {"rows": P("data"), "classes": P(None, "model"), "both": P("data", "model"),
                 "replicated": P(), "half": P("model", "data")}
        devices = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host.items()}
        assert checkpoint._checksums(devices) == checkpoint._checksums(host)
        hlo = checkpoint._device_checksums.lower(devices).compile().as_text()
        assert "all-gather" not in hlo and "all-to-all" not in hlo, hlo
        print("ok")
        """
    )
    assert out.strip() == "ok"


_KILLED_DURING_SAVE = """
import os, signal, sys
import jax.numpy as jnp, numpy as np
from jaxloss.training.checkpoint import Checkpointer

checkpointer = Checkpointer(sys.argv[1])
for epoch in range(2):
    state = {"w": jnp.full((2048, 4096), epoch, jnp.float32)}  # 32 MiB: a write takes a while
    checkpointer.save(epoch, state=state, best={"epoch": np.array([epoch])}, history=[epoch],
                      config={"seed": 0}, data={"step": epoch})
    if epoch == 0:
        assert checkpointer.latest_epoch() == 0  # waits for the first write
# save() returned while epoch 1 is still being written in the background: killed there.
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_during_an_asynchronous_save_resumes_from_the_previous_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, JAX_PLATFORMS="cpu")
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_DURING_SAVE), str(tmp_path)],
        env=env,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    _, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]
    checkpointer = Checkpointer(tmp_path)
    assert checkpointer.latest_epoch() == 0  # the interrupted save never counted
    epoch, state, _, history, data_state = checkpointer.restore_latest(
        state={"w": jnp.zeros((2048, 4096))}, best={"epoch": np.array([0])}, config={"seed": 0}
    )
    assert (epoch, history, data_state) == (0, [0], {"step": 0})
    np.testing.assert_array_equal(state["w"], 0)
    # The run goes on: the same epoch saves again over the interrupted write.
    checkpointer.save(
        1,
        state=state,
        best={"epoch": np.array([1])},
        history=[0, 1],
        config={"seed": 0},
        data={"step": 1},
    )
    assert checkpointer.latest_epoch() == 1
    checkpointer.close()


def test_a_checkpoint_with_other_checksums_is_refused_not_called_corrupt(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    _save(checkpointer, 0)
    checkpointer.close()
    # As an older jaxloss wrote them: SHA-256 digests and no scheme.
    path = tmp_path / "0" / "checksums" / "metadata"
    checksums = json.loads(path.read_text())
    del checksums["scheme"]
    path.write_text(json.dumps(checksums))
    checkpointer = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="written by an older jaxloss") as caught:
        checkpointer.restore_latest(state=_state(9), best=_best(9), config={"seed": 0})
    assert "corrupt" not in str(caught.value)
    assert checkpointer.latest_epoch() == 0  # kept
    checkpointer.close()
