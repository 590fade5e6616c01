import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from orbax.checkpoint._src.path import atomicity

from labkit import checkpoint, lm, optim, train
from labkit.gpt import GPT, GPTConfig
from labkit.optim import TrainConfig
from labkit.tokens import TokenWindows

CORPUS = np.tile(np.arange(40, dtype=np.uint16), 60)
CONFIG = TrainConfig.ci(steps=10, warmup_steps=2)


def _model_and_optimizer(seed: int = 0, **overrides) -> tuple[GPT, nnx.Optimizer]:
    config = GPTConfig.ci(vocab_size=64, max_len=16, num_layers=1, **{"dropout": 0.1, **overrides})
    model = GPT(config, rngs=nnx.Rngs(seed))
    return model, nnx.Optimizer(model, optim.make_optimizer(CONFIG), wrt=nnx.Param)


def _same_arrays(a, b) -> bool:
    def data(x):
        return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x

    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(data(x), data(y))), a, b)))


def _save(directory, step, model, optimizer, keep=3):
    return checkpoint.save_checkpoint(directory, step=step, model=model, optimizer=optimizer, key=jax.random.key(9),
                                      history={"note": step}, keep=keep)


# ---- save and restore ------------------------------------------------------------------------------------------


def test_restore_brings_back_parameters_optimizer_state_random_state_and_data_position(tmp_path):
    model, optimizer = _model_and_optimizer(0)
    nnx.jit(lambda m, o: o.update(m, jax.tree.map(jnp.ones_like, nnx.state(m, nnx.Param))))(model, optimizer)
    model.dropout(jnp.ones(3))  # moves the dropout stream's counter on
    _save(tmp_path, 5, model, optimizer)
    other_model, other_optimizer = _model_and_optimizer(1)
    assert not _same_arrays(nnx.state(other_model), nnx.state(model))
    restored = checkpoint.restore_checkpoint(tmp_path, model=other_model, optimizer=other_optimizer)
    assert restored.step == 5 and restored.history == {"note": 5}
    assert jnp.array_equal(jax.random.key_data(restored.key), jax.random.key_data(jax.random.key(9)))
    assert _same_arrays(nnx.state(other_model), nnx.state(model))  # Params and the dropout stream's key and count
    assert _same_arrays(nnx.state(other_optimizer), nnx.state(optimizer))  # Adam's moments and the step count
    assert int(other_optimizer.step[...]) == 1


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model, optimizer = _model_and_optimizer()
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, model, optimizer, keep=2)
    assert checkpoint.checkpoint_steps(tmp_path) == [3, 4]
    (tmp_path / "notes.txt").write_text("mine")  # a user's file beside the checkpoints is never touched
    _save(tmp_path, 5, model, optimizer, keep=2)
    assert checkpoint.checkpoint_steps(tmp_path) == [4, 5] and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_numbered_folder_that_is_not_a_checkpoint_is_never_deleted(tmp_path):
    model, optimizer = _model_and_optimizer()
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.csv").write_text("mine")  # orbax would take "1" for the oldest checkpoint
    assert checkpoint.checkpoint_steps(tmp_path) == []
    with pytest.raises(FileExistsError, match="has a folder '1' that is not a checkpoint"):
        _save(tmp_path, 2, model, optimizer, keep=1)
    assert (tmp_path / "1" / "results.csv").read_text() == "mine"


def test_an_interrupted_save_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    model, optimizer = _model_and_optimizer(0)
    _save(tmp_path, 1, model, optimizer)
    saved = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    nnx.jit(lambda m, o: o.update(m, jax.tree.map(jnp.ones_like, nnx.state(m, nnx.Param))))(model, optimizer)

    async def power_cut(self, *args, **kwargs):  # every file of step 2 is written; the final rename never happens
        raise OSError("power cut")

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", power_cut)
    with pytest.raises(OSError, match="power cut"):
        _save(tmp_path, 2, model, optimizer)
    monkeypatch.undo()
    assert any(".orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir())  # the half-done save is there ...
    assert checkpoint.checkpoint_steps(tmp_path) == [1]  # ... but not counted as a checkpoint
    fresh_model, fresh_optimizer = _model_and_optimizer(1)
    assert checkpoint.restore_checkpoint(tmp_path, model=fresh_model, optimizer=fresh_optimizer).step == 1
    assert _same_arrays(nnx.state(fresh_model, nnx.Param), saved)
    _save(tmp_path, 3, model, optimizer)  # the next save clears the leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "3"]


def test_a_leftover_partial_folder_from_a_killed_process_is_ignored(tmp_path):
    model, optimizer = _model_and_optimizer(0)
    _save(tmp_path, 4, model, optimizer)
    partial = tmp_path / "8.orbax-checkpoint-tmp"  # what a process killed while writing step 8 leaves behind
    (partial / "model").mkdir(parents=True)
    (partial / "model" / "half_written").write_bytes(b"\x00" * 100)
    assert checkpoint.checkpoint_steps(tmp_path) == [4]
    assert checkpoint.restore_checkpoint(tmp_path, model=model, optimizer=optimizer).step == 4


def test_restore_errors_name_what_is_wrong(tmp_path):
    model, optimizer = _model_and_optimizer()
    with pytest.raises(FileNotFoundError, match="checkpoint directory .*missing does not exist"):
        checkpoint.restore_checkpoint(tmp_path / "missing", model=model, optimizer=optimizer)
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        checkpoint.restore_checkpoint(tmp_path, model=model, optimizer=optimizer)
    _save(tmp_path, 2, model, optimizer)
    with pytest.raises(ValueError, match=r"step 7 has no checkpoint in .*; it has steps \[2\]"):
        checkpoint.restore_checkpoint(tmp_path, model=model, optimizer=optimizer, step=7)
    wider, wider_optimizer = _model_and_optimizer(mlp_width=64)
    with pytest.raises(ValueError, match=r"model parameter 'blocks/0/mlp/down/kernel' has shape \(128, 32\) in "
                                         r"checkpoint .* but \(64, 32\) in the model"):
        checkpoint.restore_checkpoint(tmp_path, model=wider, optimizer=wider_optimizer)
    untied, untied_optimizer = _model_and_optimizer(tie_embeddings=False)
    with pytest.raises(ValueError, match="has no model entry 'head/kernel'"):
        checkpoint.restore_checkpoint(tmp_path, model=untied, optimizer=untied_optimizer)
    with pytest.raises(ValueError, match="step 2 is not newer than the newest checkpoint"):
        _save(tmp_path, 2, model, optimizer)
    with pytest.raises(TypeError, match="key must be one typed key"):
        checkpoint.save_checkpoint(tmp_path, step=3, model=model, optimizer=optimizer, key=0)


# ---- resuming fit ----------------------------------------------------------------------------------------------


class _PowerCut(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class _FailingWindows(TokenWindows):
    fail_at: int = 0  # the batch number at which the machine "goes down"

    def batch(self, key, index, batch_size):
        if index == self.fail_at:
            raise _PowerCut(f"stopped before step {index}")
        return super().batch(key, index, batch_size)


def _fit(train_windows, directory, steps=10):
    model, optimizer = _model_and_optimizer(0)
    return train.fit(model, optimizer, lm.loss, train_windows, steps=steps, batch_size=2, accumulation=2,
                     key=jax.random.key(1), eval_data=TokenWindows(CORPUS[:300], seq_len=12), eval_every=4,
                     eval_batches=2, checkpoint_dir=directory, checkpoint_every=3, progress=False)


@pytest.mark.slow  # trains, stops and resumes
def test_a_stopped_and_resumed_run_gives_the_losses_of_one_that_never_stopped(tmp_path):
    uninterrupted = _fit(TokenWindows(CORPUS, seq_len=12), tmp_path / "once")
    with pytest.raises(_PowerCut):  # checkpoints at steps 3 and 6, then the run dies during step 8
        _fit(_FailingWindows(CORPUS, seq_len=12, fail_at=8), tmp_path / "twice")
    assert checkpoint.checkpoint_steps(tmp_path / "twice") == [3, 6]
    resumed = _fit(TokenWindows(CORPUS, seq_len=12), tmp_path / "twice")  # new model and optimizer, same call
    assert resumed.step == uninterrupted.step == list(range(1, 11))
    assert resumed.loss == uninterrupted.loss  # bit for bit: dropout, data and Adam all continue exactly
    assert resumed.eval == uninterrupted.eval and resumed.eval_step == [4, 8, 10]
    assert resumed.tokens == uninterrupted.tokens
    assert checkpoint.checkpoint_steps(tmp_path / "twice") == [6, 9, 10]
    again = _fit(TokenWindows(CORPUS, seq_len=12), tmp_path / "twice")  # a finished run: nothing left to do
    assert again.loss == uninterrupted.loss


@pytest.mark.slow  # trains, stops and resumes
def test_resuming_checks_the_key_and_the_number_of_steps(tmp_path):
    _fit(TokenWindows(CORPUS, seq_len=12), tmp_path, steps=3)
    model, optimizer = _model_and_optimizer(0)
    with pytest.raises(ValueError, match="key differs from the data key of the run checkpointed"):
        train.fit(model, optimizer, lm.loss, TokenWindows(CORPUS, seq_len=12), steps=5, batch_size=2,
                  accumulation=2, key=jax.random.key(2), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds step 3, beyond steps=2"):
        _fit(TokenWindows(CORPUS, seq_len=12), tmp_path, steps=2)
