"""Orbax checkpoints of the whole training state (model + optimizer).

The state is an ``nnx.State`` of fp32 parameters, optimizer moments, step
counters and the per-layer stochastic-rounding counters, saved as a plain
pytree. Orbax writes each step to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact;
``restore`` takes the latest complete one.
"""

import pathlib

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """Saves every ``every`` steps (and on demand), keeps the last ``keep``."""

  def __init__(self, directory: pathlib.Path, *, every: int, keep: int = 2):
    self._manager = ocp.CheckpointManager(
      directory.absolute(),
      options=ocp.CheckpointManagerOptions(
        save_interval_steps=every,
        max_to_keep=keep,
        # Synchronous: a step counts as saved only once it is on disk.
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, *, force: bool = False) -> bool:
    return self._manager.save(
      step, args=ocp.args.StandardSave(state), force=force
    )

  def restore(self, step: int, like):
    """Restores ``step`` into the structure, dtypes and shardings of ``like``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
