"""Checkpoints of a training run: model, optimizer state and data position, saved atomically with orbax.

Each checkpoint is a folder ``directory/<step>`` written by orbax's ``CheckpointManager``. Orbax writes it into a
temporary folder (``<step>.orbax-checkpoint-tmp``) and renames it to ``<step>`` only once every file is on disk, so
a save that is interrupted (a crash, a full disk, a killed kernel) leaves no ``<step>`` folder: the previous
checkpoint is still the newest complete one, and the leftover temporary folder is deleted by the next save. Only the
newest ``keep`` checkpoints are kept; older ones are deleted after a newer one is complete.

>>> save_checkpoint(folder, step=100, model=model, optimizer=optimizer, key=data_key)  # doctest: +SKIP
>>> restored = restore_checkpoint(folder, model=model, optimizer=optimizer)  # in place  # doctest: +SKIP
>>> restored.step, restored.key  # where the data stream stood  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers

ITEMS = ("model", "optimizer", "run")  # one orbax item each: two trees of arrays, one JSON record


@dataclasses.dataclass(frozen=True)
class Restored:
    """What ``restore_checkpoint`` found besides the arrays it put into the model and optimizer."""

    step: int  # optimizer steps taken when the checkpoint was saved
    key: jax.Array  # the data key of the run (with the step, it fixes every batch still to come)
    history: dict[str, Any] | None  # the JSON record saved with the checkpoint (fit's History as a dict), if any


def _manager(directory: Path, *, keep: int, saving: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.LatestN(keep),
        enable_async_checkpointing=False,  # save returns when the checkpoint is complete on disk
        cleanup_tmp_directories=saving,  # remove folders of interrupted saves; never while only reading
        create=saving,
    )
    handlers = {"model": ocp.StandardCheckpointHandler(), "optimizer": ocp.StandardCheckpointHandler(),
                "run": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _arrays(node: nnx.Module | nnx.Optimizer) -> dict:
    """The state of ``node`` as nested dicts of arrays; random keys (e.g. dropout's) as their raw uint32 data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, nnx.to_pure_dict(nnx.state(node)))


def _put_back(node: nnx.Module | nnx.Optimizer, saved: dict) -> None:
    """Write arrays in the layout of ``_arrays(node)`` into ``node``, turning key data back into keys."""
    state = nnx.state(node)
    current = nnx.to_pure_dict(state)
    values = jax.tree.map(
        lambda s, c: jax.random.wrap_key_data(s, impl=jax.random.key_impl(c)) if _is_key(c) else s, saved, current)
    nnx.replace_by_pure_dict(state, values)
    nnx.update(node, state)


def _check_directory(directory: str | Path, argument: str = "directory") -> Path:
    if not isinstance(directory, (str, Path)) or not str(directory):
        raise TypeError(f"{argument} must be a folder path (str or Path); got {directory!r}")
    return Path(directory).absolute()


_MARKER = "_CHECKPOINT_METADATA"  # the file orbax writes into every checkpoint folder it makes


def _complete_steps(directory: Path) -> list[int]:
    """Steps of the folders orbax finished; a numbered folder it did not make is not a checkpoint."""
    folders = [p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(int(p.name) for p in folders if (p / _MARKER).is_file())


def _refuse_foreign_folders(directory: Path) -> None:
    """Orbax treats every folder named by a number as a checkpoint, and deletes the oldest: never let it near a
    folder a user made."""
    for folder in sorted(directory.iterdir()):
        if folder.is_dir() and folder.name.isdigit() and not (folder / _MARKER).is_file():
            raise FileExistsError(f"directory {directory} has a folder {folder.name!r} that is not a checkpoint; "
                                  "keeping the newest checkpoints would delete it: move it, or use another directory")


def checkpoint_steps(directory: str | Path) -> list[int]:
    """The steps of the complete checkpoints in ``directory``, oldest first (empty if it has none or is missing)."""
    directory = _check_directory(directory)
    return _complete_steps(directory) if directory.is_dir() else []


def save_checkpoint(
    directory: str | Path,
    *,
    step: int,
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    key: jax.Array,
    history: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """Save the model's and optimizer's state, the data ``key`` and ``history`` as checkpoint ``step``; its folder.

    ``step`` must be newer than every checkpoint already in ``directory``, which is created if needed.
    """
    directory = _check_directory(directory)
    if type(step) is not int or step < 0:
        raise ValueError(f"step must be a non-negative int; got {step!r}")
    if type(keep) is not int or keep < 1:
        raise ValueError(f"keep must be a positive int (checkpoints to keep); got {keep!r}")
    if not isinstance(model, nnx.Module) or not isinstance(optimizer, nnx.Optimizer):
        raise TypeError(f"model must be an nnx.Module and optimizer an nnx.Optimizer; "
                        f"got {type(model).__name__} and {type(optimizer).__name__}")
    if not _is_key(key) or key.shape:
        raise TypeError(f"key must be one typed key from jax.random.key(seed); got {getattr(key, 'dtype', key)!r}")
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"directory {directory} exists and is not a folder")
    if directory.is_dir():
        _refuse_foreign_folders(directory)
    run = {"step": step, "key_data": jax.random.key_data(key).tolist(), "key_impl": str(jax.random.key_impl(key)),
           "history": history}
    with _manager(directory, keep=keep, saving=True) as manager:
        newest = max(manager.all_steps(), default=None)
        if newest is not None and step <= newest:
            raise ValueError(f"step {step} is not newer than the newest checkpoint in {directory}, step {newest}; "
                             "checkpoints must move forward (use a new folder to start a run again)")
        manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(_arrays(model)),
            optimizer=ocp.args.StandardSave(_arrays(optimizer)),
            run=ocp.args.JsonSave(run)))
    return directory / str(step)


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
            for path, leaf in flat}


def _check_shapes(item: str, saved: Any, expected: Any, where: Path) -> None:
    """Raise if the checkpoint's ``item`` does not have exactly the parameters and shapes of ``expected``."""
    saved, expected = _flat_shapes(saved), _flat_shapes(expected)
    for name in expected:
        if name not in saved:
            raise ValueError(f"checkpoint {where} has no {item} entry {name!r}, which the {item} has; "
                             "was it saved from a different model or optimizer?")
        if saved[name] != expected[name]:
            raise ValueError(f"{item} parameter {name!r} has shape {saved[name]} in checkpoint {where} but "
                             f"{expected[name]} in the {item}; build the {item} with the config it was saved with")
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise ValueError(f"checkpoint {where} has {item} entries the {item} lacks, e.g. {extra[0]!r}; "
                         "was it saved from a different model or optimizer?")


def restore_checkpoint(
    directory: str | Path, *, model: nnx.Module, optimizer: nnx.Optimizer, step: int | None = None
) -> Restored:
    """Load checkpoint ``step`` (default: the newest) of ``directory`` into ``model`` and ``optimizer``, in place.

    Shapes are checked first; a mismatch names the parameter and leaves ``model`` and ``optimizer`` untouched.
    """
    directory = _check_directory(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    if not isinstance(model, nnx.Module) or not isinstance(optimizer, nnx.Optimizer):
        raise TypeError(f"model must be an nnx.Module and optimizer an nnx.Optimizer; "
                        f"got {type(model).__name__} and {type(optimizer).__name__}")
    with _manager(directory, keep=1, saving=False) as manager:
        steps = _complete_steps(directory)
        if not steps:
            raise FileNotFoundError(f"checkpoint directory {directory} holds no complete checkpoint")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise ValueError(f"step {step!r} has no checkpoint in {directory}; it has steps {steps}")
        where = directory / str(step)
        targets = {"model": _arrays(model), "optimizer": _arrays(optimizer)}
        metadata = manager.item_metadata(step)
        for item, target in targets.items():
            _check_shapes(item, metadata[item].tree, target, where)
        restored = manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(targets["model"]),
            optimizer=ocp.args.StandardRestore(targets["optimizer"]),
            run=ocp.args.JsonRestore()))
    _put_back(model, restored["model"])
    _put_back(optimizer, restored["optimizer"])
    run = restored["run"]
    key = jax.random.wrap_key_data(jax.numpy.asarray(run["key_data"], jax.numpy.uint32), impl=run["key_impl"])
    return Restored(step=int(run["step"]), key=key, history=run["history"])
