"""Starting a run from another run's trained parameters (fine-tuning).

``--init-from RUN_DIR`` takes the model parameters (``nnx.Param``) of the
latest checkpoint of the run in ``RUN_DIR`` and starts a new run from them:
fresh optimizer state, schedule and step count, any recipe. The two runs'
model shapes must match. Parameters the new recipe adds (an INT4 layer's
learned LSQ steps) keep their initial values; per-layer quantization state
(seeds, the Hadamard block) is the new run's own.
"""

import dataclasses
import json
import pathlib

from flax import nnx

from train.checkpoint import Checkpoints
from train.model import GPTConfig


def _source(init_from: str) -> tuple[pathlib.Path, dict]:
  run_dir = pathlib.Path(init_from)
  config = run_dir / "config.json"
  if not config.is_file():
    raise ValueError(
      f"--init-from {init_from!r} is not a run directory (no config.json)"
    )
  return run_dir, json.loads(config.read_text())


def check_init_from(init_from: str | None, model_json: dict) -> None:
  """ValueError (one line) unless ``init_from`` is a run with a checkpoint
  and the same model shape as ``model_json``."""
  if init_from is None:
    return
  run_dir, saved = _source(init_from)
  # Through GPTConfig, so fields added since it was saved are at defaults.
  if dataclasses.asdict(GPTConfig(**saved["model"])) != model_json:
    raise ValueError(
      f"--init-from {init_from!r} trained model {saved['model']}, this run "
      f"is {model_json}"
    )
  if Checkpoints(run_dir / "checkpoints", every=1).latest_step() is None:
    raise ValueError(f"--init-from {init_from!r} holds no checkpoint")


def load_params(init_from: str, state, build):
  """``state`` (the new run's (model, optimizer) state) with the model's
  parameters replaced by those of ``init_from``'s latest checkpoint.

  ``build(config_json) -> (graphdef, state)`` builds the source run's state
  structure to restore into.
  """
  run_dir, saved = _source(init_from)
  checkpoints = Checkpoints(run_dir / "checkpoints", every=1)
  try:
    step = checkpoints.latest_step()
    source = checkpoints.restore(step, build(saved))
  finally:
    checkpoints.close()
  source_params = dict(nnx.to_flat_state(source))
  flat = nnx.to_flat_state(state)
  missing = []
  for path, variable in flat:
    if path[0] != 0 or not isinstance(variable, nnx.Param):
      continue  # optimizer state, quantization state
    found = source_params.get(path)
    if found is None or not isinstance(found, nnx.Param):
      missing.append("/".join(map(str, path[1:])))
      continue
    variable.set_value(found.get_value())
  unexpected = [m for m in missing if not m.endswith("lsq_step")]
  if unexpected:
    raise ValueError(
      f"--init-from {init_from!r} has no parameters for {unexpected}"
    )
  return nnx.from_flat_state(flat)
