"""Quantized optimizers against ``optax.adamw`` on extreme gradients and trees.

Every case runs 4 steps from the same parameters: step 0 gets the case's
gradient (one huge, infinite or NaN element, all huge, ...), steps 1-3 get
ordinary gradients (1e-3 standard normal). For each optimizer and step the
table gives max |update| over the finite updates and the number of
non-finite updates, beside ``optax.adamw``'s (fp32 states, same
hyper-parameters). Every leaf has quantized states (``quantize_mask`` all
True) except in the "no quantized leaf" case (the default mask).

The contract (``tests/optim/test_contract.py``): the non-finite updates are
exactly optax's, element for element, and the finite ones stay within the
formats' error of optax's.

  python -m benchmarks.optim_robustness   # results/optim_robustness.*
"""

import dataclasses
import functools
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._results import write_results
from lowprec_jax.optim import adamw_4bit, adamw_8bit, adamw_fp8

LEARNING_RATE = 1e-2
STEPS = 4
OPTIMIZERS = {
  "optax": optax.adamw,
  "adamw_fp8": adamw_fp8,
  "adamw_8bit": adamw_8bit,
  "adamw_4bit": adamw_4bit,
}


def _normal(shape, seed, dtype=jnp.float32):
  x = np.random.default_rng(seed).standard_normal(shape) * 1e-3
  return jnp.asarray(x, dtype)


MATRIX_SHAPE = (4, 256)
SPIKE_AT = (0, 3)  # the element of "w" a spike case hits on step 0


def _matrix(dtype=jnp.float32):
  return {"w": _normal(MATRIX_SHAPE, 0, dtype) * 100}


def _spike(value):
  def grads(params, step):
    g = jax.tree.map(lambda p: _normal(p.shape, 10 + step, p.dtype), params)
    if step == 0:
      g["w"] = g["w"].at[SPIKE_AT].set(value)
    return g

  return grads


def _ordinary(params, step):
  return jax.tree.map(
    lambda p: None if p is None else _normal(p.shape, 10 + step, p.dtype),
    params,
    is_leaf=lambda x: x is None,
  )


def _all_huge(params, step):
  g = _ordinary(params, step)
  return jax.tree.map(lambda x: jnp.full_like(x, 1e30), g) if step == 0 else g


@dataclasses.dataclass(frozen=True)
class Case:
  """Parameters, the gradient of each step, whether every leaf is quantized
  (else the optimizer's default mask), and the flat index of the element a
  spike hits (its own update is reported apart from the others')."""

  params: Callable[[], dict]
  grads: Callable[[dict, int], dict]
  quantize_all: bool = True
  spiked: int | None = None


def _spiked(value) -> Case:
  return Case(
    _matrix,
    _spike(value),
    spiked=int(np.ravel_multi_index(SPIKE_AT, MATRIX_SHAPE)),
  )


CASES = {
  "ordinary": Case(_matrix, _ordinary),
  "one 1e20 element": _spiked(1e20),
  "one 3e38 element": _spiked(3e38),
  "one 1e15 element": _spiked(1e15),
  "all 1e30": Case(_matrix, _all_huge),
  "one inf": _spiked(jnp.inf),
  "one -inf": _spiked(-jnp.inf),
  "one NaN": _spiked(jnp.nan),
  "f16 params": Case(lambda: _matrix(jnp.float16), _ordinary),
  "empty tree": Case(dict, lambda params, step: {}),
  "no quantized leaf": Case(
    lambda: {"b": _normal((256,), 1), "w": _normal((8, 8), 2)},
    _ordinary,
    quantize_all=False,
  ),
  "scalar": Case(lambda: {"s": jnp.float32(0.5)}, _ordinary),
  "zero-size": Case(lambda: {"z": jnp.zeros((0, 256)), **_matrix()}, _ordinary),
  "None leaf": Case(lambda: {"n": None, **_matrix()}, _ordinary),
}


@functools.cache
def make(factory, quantize_all: bool):
  """``factory(LEARNING_RATE)`` (every leaf quantized if asked; never for
  ``optax.adamw``) and its jitted update, cached: cases with the same tree
  reuse the compiled step."""
  kwargs = {}
  if quantize_all and factory is not optax.adamw:
    kwargs["quantize_mask"] = lambda p: jax.tree.map(lambda _: True, p)
  tx = factory(LEARNING_RATE, **kwargs)
  return tx, jax.jit(tx.update)


def run(factory, case: Case) -> list[list[np.ndarray]]:
  """The updates of each step, as float32 leaves (None leaves dropped)."""
  params = case.params()
  tx, update = make(factory, case.quantize_all)
  state = tx.init(params)
  steps = []
  with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 and floats
    for step in range(STEPS):
      updates, state = update(case.grads(params, step), state, params)
      params = optax.apply_updates(params, updates)
      steps.append(
        [np.asarray(u, np.float32) for u in jax.tree.leaves(updates)]
      )
  return steps


def _flat(updates: list[np.ndarray]) -> np.ndarray:
  return np.concatenate([u.reshape(-1) for u in updates] or [np.zeros(0)])


def summary(updates, reference, spiked=None) -> tuple[float, int, float, float]:
  """(max |update| over finite elements, number of non-finite ones, max
  |update - reference| / lr over the elements finite in both other than the
  ``spiked`` one, and that one's own (0 if none or not finite in both))."""
  flat, ref = _flat(updates), _flat(reference)
  finite = np.isfinite(flat)
  top = float(np.max(np.abs(flat[finite]), initial=0.0))
  distance = np.where(
    finite & np.isfinite(ref), np.abs(flat - ref) / LEARNING_RATE, 0.0
  )
  own = 0.0
  if spiked is not None:
    own, distance[spiked] = float(distance[spiked]), 0.0
  return top, int(flat.size - finite.sum()), float(distance.max(initial=0)), own


def measure() -> dict:
  result = {"learning_rate": LEARNING_RATE, "steps": STEPS, "cases": {}}
  result["spiked"] = {n: c.spiked is not None for n, c in CASES.items()}
  for case_name, case in CASES.items():
    reference = run(optax.adamw, case)
    result["cases"][case_name] = {
      name: [
        summary(u, r, case.spiked)
        for u, r in zip(run(factory, case), reference)
      ]
      for name, factory in OPTIMIZERS.items()
    }
  return result


def _markdown(result: dict, info: dict) -> str:
  names = list(OPTIMIZERS)
  steps = result["steps"]
  lines = [
    "Max |update| over finite updates (non-finite count) on the case's step "
    f"0 and the next {steps - 1} ordinary steps, lr {result['learning_rate']}"
    f" (`{info['command']}`, commit {info['commit']}, jax {info['jax']}, "
    f"{info['device']}).",
    "",
    "| case | step | " + " | ".join(names) + " |",
    "|---|---|" + "---|" * len(names),
  ]
  for case_name, rows in result["cases"].items():
    for step in range(steps):
      cells = [f"{rows[n][step][0]:.3g} ({rows[n][step][1]})" for n in names]
      lines.append(f"| {case_name} | {step} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "Largest distance to optax's update over the elements finite in both, in"
    " units of lr, over the 4 steps: the spiked element's own in brackets, "
    "the others' before (f16 params: optax's own f16 moments underflow, so "
    "its updates are NaN and nothing is compared):",
    "",
    "| case | " + " | ".join(names[1:]) + " |",
    "|---|" + "---|" * (len(names) - 1),
  ]
  for case_name, rows in result["cases"].items():
    cells = []
    for n in names[1:]:
      others, own = (max(r[i] for r in rows[n]) for i in (2, 3))
      spiked = result["spiked"].get(case_name, False)
      cells.append(f"{others:.3g}" + (f" ({own:.3g})" if spiked else ""))
    lines.append(f"| {case_name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if argv:
    raise SystemExit(f"optim_robustness takes no arguments, got {argv}")
  write_results(
    "optim_robustness",
    "benchmarks.optim_robustness",
    argv,
    measure(),
    _markdown,
  )


if __name__ == "__main__":
  main()
