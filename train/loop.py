"""One training run: build, (resume,) train, evaluate, checkpoint, report.

A run directory holds ``config.json``, ``metrics.jsonl`` (one line per step,
plus eval lines), ``checkpoints/``, ``summary.json`` and ``loss.png``. If the
directory already has a checkpoint, the run resumes from the latest one: the
state, the stochastic-rounding counters and the data position (batches are a
function of the step) are restored, so a resumed run reproduces an
uninterrupted one step for step.
"""

import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lowprec_jax import optim
from lowprec_jax.ops import census, get_recipe
from train import data as data_lib
from train.checkpoint import Checkpoints
from train.init_from import load_params
from train.model import (
  SAVED_ACTIVATIONS,
  GPTConfig,
  loss_fn,
  make_model,
  quantize_gpt,
)

# optax.adamw and its quantized-state twins share a signature.
OPTIMIZERS = {
  "adamw": optax.adamw,
  "adamw_fp8": optim.adamw_fp8,
  "adamw_8bit": optim.adamw_8bit,
  "adamw_4bit": optim.adamw_4bit,
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that determines a run's trajectory."""

  recipe: str = "bf16"
  optimizer: str = "adamw"
  model: GPTConfig = GPTConfig()
  steps: int = 300
  batch_size: int = 16
  lr: float = 3e-3
  warmup: int = 30
  weight_decay: float = 0.1
  grad_clip: float = 1.0
  seed: int = 0
  data: str | None = None
  eval_every: int = 100
  eval_batches: int = 8
  ckpt_every: int = 100
  implementation: str | None = None
  init_from: str | None = None  # a run directory (train/init_from.py)

  def __post_init__(self):
    name = get_recipe(self.recipe).name
    if name in SAVED_ACTIVATIONS and self.model.arch != "gpt":
      raise ValueError(
        f"recipe {name!r} needs arch 'gpt': its FP8 saving of norm and "
        f"activation inputs is not implemented for arch {self.model.arch!r} "
        "yet (RMSNorm, SiLU, the SwiGLU multiply)"
      )
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(
        f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}"
      )
    for name in ("steps", "batch_size", "eval_every", "eval_batches"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.ckpt_every < 1:
      raise ValueError(f"ckpt_every must be >= 1, got {self.ckpt_every}")
    if not 0 <= self.warmup < self.steps:
      raise ValueError(
        f"warmup must be in [0, steps); got warmup {self.warmup} with steps "
        f"{self.steps} (the learning rate would never reach lr {self.lr})"
      )

  @property
  def name(self) -> str:
    """The run's name: the recipe, plus ``+optimizer`` unless it is adamw."""
    if self.optimizer == "adamw":
      return self.recipe
    return f"{self.recipe}+{self.optimizer}"

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "TrainConfig":
    return cls(**{**d, "model": GPTConfig(**d["model"])})


def make_optimizer(cfg: TrainConfig):
  """AdamW (b2 = 0.95) with warmup + cosine decay, global-norm clipping.

  ``cfg.optimizer`` picks fp32 states (``adamw``) or quantized ones
  (``adamw_fp8``, ``adamw_8bit``, ``adamw_4bit``, with
  :mod:`lowprec_jax.optim`'s default mask: embeddings, vectors and small
  matrices keep fp32 states). Weight decay applies to matrices only (not
  LayerNorm scales or biases). Returns the transformation and the
  learning-rate schedule.
  """
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, cfg.lr, cfg.warmup, max(cfg.steps, cfg.warmup + 1), cfg.lr * 0.1
  )
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
  return optax.chain(
    optax.clip_by_global_norm(cfg.grad_clip),
    OPTIMIZERS[cfg.optimizer](
      schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay, mask=decay_mask
    ),
  ), schedule


def build(cfg: TrainConfig):
  """Returns (graphdef, state, schedule) of the model and its optimizer."""
  rngs = nnx.Rngs(params=cfg.seed, quant=cfg.seed + 1)
  model = make_model(cfg.model, rngs=rngs)
  quantize_gpt(model, cfg.recipe, rngs=rngs, implementation=cfg.implementation)
  tx, schedule = make_optimizer(cfg)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  return graphdef, state, schedule


def make_steps(graphdef):
  """The jitted train step and eval function over the split state."""

  @jax.jit
  def train_step(state, batch):
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    grad_norm = optax.tree.norm(grads)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss, grad_norm

  @jax.jit
  def eval_loss(state, batch):
    model, _ = nnx.merge(graphdef, state)
    return loss_fn(model, batch)

  return train_step, eval_loss


def _records(path: pathlib.Path) -> list[dict]:
  """Parsed lines of a metrics file; a partial last line (a run killed while
  writing it) is dropped."""
  records = []
  lines = [x for x in path.read_text().splitlines() if x.strip()]
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i != len(lines) - 1:
        raise
  return records


class _Metrics:
  """metrics.jsonl, truncated to the resumed step so lines never repeat."""

  def __init__(self, path: pathlib.Path, resume_step: int):
    kept = []
    if path.exists() and resume_step > 0:
      kept = [r for r in _records(path) if r["step"] <= resume_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    self._file = path.open("a")

  def write(self, record: dict) -> None:
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def _check_resumable(run_dir: pathlib.Path, cfg: TrainConfig) -> None:
  # Through from_json, so fields added since the run was saved compare at
  # their defaults.
  saved = json.loads((run_dir / "config.json").read_text())
  saved = TrainConfig.from_json(saved).to_json()
  if saved != cfg.to_json():
    diff = {
      k: (saved.get(k), v)
      for k, v in cfg.to_json().items()
      if saved.get(k) != v
    }
    raise ValueError(
      f"{run_dir} holds a run with a different config {diff} (saved, new); "
      "use another --out or --fresh to start over"
    )


def _evaluate(eval_loss, state, batches) -> float:
  return float(np.mean([float(eval_loss(state, b)) for b in batches]))


def run(
  cfg: TrainConfig,
  run_dir: pathlib.Path,
  *,
  provenance: dict,
  progress: bool = True,
) -> dict:
  """Trains (or resumes) one run in ``run_dir``; returns its summary."""
  run_dir.mkdir(parents=True, exist_ok=True)
  corpus = data_lib.load_corpus(cfg.data)
  graphdef, state, schedule = build(cfg)
  train_step, eval_loss = make_steps(graphdef)
  checkpoints = Checkpoints(run_dir / "checkpoints", every=cfg.ckpt_every)
  start = checkpoints.latest_step() or 0
  if start:
    _check_resumable(run_dir, cfg)
    state = checkpoints.restore(start, state)
    print(f"{cfg.name}: resumed from step {start} ({run_dir})")
  else:
    if cfg.init_from is not None:
      state = load_params(
        cfg.init_from,
        state,
        lambda saved: build(TrainConfig.from_json(saved))[1],
      )
    (run_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
  val = data_lib.eval_batches(
    corpus,
    num_batches=cfg.eval_batches,
    batch_size=cfg.batch_size,
    seq_len=cfg.model.seq_len,
  )

  def batch_at(step):
    return jnp.asarray(
      data_lib.train_batch(
        corpus,
        seed=cfg.seed,
        step=step,
        batch_size=cfg.batch_size,
        seq_len=cfg.model.seq_len,
      )
    )

  gemms = census(train_step, state, batch_at(0))
  tokens_per_step = cfg.batch_size * cfg.model.seq_len
  metrics = _Metrics(run_dir / "metrics.jsonl", start)
  bar = _progress(cfg, start, progress)
  rates, started = [], time.perf_counter()
  try:
    for step in range(start + 1, cfg.steps + 1):
      t0 = time.perf_counter()
      state, loss, grad_norm = train_step(state, batch_at(step))
      loss = float(loss)
      dt = time.perf_counter() - t0
      if step > start + 1:  # the first step includes compilation
        rates.append(tokens_per_step / dt)
      if not np.isfinite(loss):
        raise FloatingPointError(f"loss became {loss} at step {step}")
      record = {
        "step": step,
        "loss": loss,
        "grad_norm": float(grad_norm),
        "lr": float(schedule(step - 1)),
        "tokens_per_s": tokens_per_step / dt,
      }
      if step % cfg.eval_every == 0 or step == cfg.steps:
        record["eval_loss"] = _evaluate(eval_loss, state, val)
      metrics.write(record)
      checkpoints.save(step, state, force=step == cfg.steps)
      bar.update(1)
      bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
  finally:
    bar.close()
    metrics.close()
    checkpoints.close()
  summary = _summarize(cfg, run_dir, provenance, gemms, rates)
  summary["optimizer_state"] = optimizer_state_bytes(graphdef, state)
  summary["wall_s_this_session"] = round(time.perf_counter() - started, 1)
  (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary


def _progress(cfg: TrainConfig, start: int, enabled: bool):
  from tqdm import tqdm

  return tqdm(
    total=cfg.steps,
    initial=start,
    desc=cfg.name,
    unit="step",
    disable=not enabled,
    dynamic_ncols=True,
  )


def optimizer_state_bytes(graphdef, state) -> dict:
  """Exact bytes of the optimizer state, total and per model parameter
  (quantized and fp32-state leaves together, step counters included)."""
  model, optimizer = nnx.merge(graphdef, state)
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  opt = jax.tree.leaves(nnx.state(optimizer, nnx.OptState))
  n_params = sum(int(p.size) for p in params)
  n_bytes = sum(int(x.size) * x.dtype.itemsize for x in opt)
  return {
    "bytes": n_bytes,
    "parameters": n_params,
    "bytes_per_parameter": round(n_bytes / n_params, 4),
  }


def read_metrics(run_dir: pathlib.Path) -> list[dict]:
  return _records(run_dir / "metrics.jsonl")


def _summarize(cfg, run_dir, provenance, gemms, rates) -> dict:
  records = read_metrics(run_dir)
  evals = [r for r in records if "eval_loss" in r]
  tail = [r["loss"] for r in records[-max(1, len(records) // 10) :]]
  return {
    "run": cfg.name,
    "recipe": cfg.recipe,
    "optimizer": cfg.optimizer,
    "steps": records[-1]["step"],
    "tokens": records[-1]["step"] * cfg.batch_size * cfg.model.seq_len,
    "final_eval_loss": evals[-1]["eval_loss"],
    "final_train_loss": float(np.mean(tail)),
    "median_tokens_per_s": float(np.median(rates)) if rates else None,
    "gemms": {
      "quantized": gemms.total(quantized=True),
      "unquantized": gemms.total(quantized=False),
      "summary": gemms.summary().splitlines(),
      "table": str(gemms).splitlines(),
    },
    "config": cfg.to_json(),
    "provenance": provenance,
  }
