"""INT4 quantizer figures: the Hadamard quantizer's error on outlier channels,
the block it picks per GPT layer, and the gradient estimators' bias and
variance at equal cost.

1. **HQ vs plain INT4.** Per-tensor INT4 (absmax and LSQ at its initial
   step) of activations with outlier channels (Gaussian tokens x features,
   three features scaled by 20-30x), with and without the Hadamard
   rotation: MSE of the dequantized values (in the rotated domain, equal to
   the original domain's since H is orthogonal), per block size.
2. **Blocks chosen per layer.** The default GPT (``train/model.py``) with
   ``int4_hq`` runs one training step on the first batch of the default
   corpus; each layer's :class:`~lowprec_jax.nn.QuantDotGeneral` records the
   Hadamard block its search picked.
3. **Gradient estimators.** ``dw = g^T x`` and ``dx = g w`` for gradients
   whose rows differ in norm by orders of magnitude (``g_i ~ N(0, 1)
   exp(2 z_i)``, few tokens carrying the loss): plain per-tensor INT4 with
   stochastic rounding (one INT4 GEMM), the faithful and the full bit split
   with static-size leverage-score sampling (budget N of 2N rows: one INT4
   GEMM), and both splits with every row (on Hopper one INT8 GEMM on
   ``14 hi + lo``, the cost of one INT4 GEMM there). Relative bias
   ``||mean - exact|| / ||exact||`` and relative variance ``E||e -
   mean||^2 / ||exact||^2`` over independent draws, and the bias of the
   unbiased estimator against the number of draws n (it falls like
   ``1/sqrt(n)``: the expected error of a mean of n unbiased draws).

  python -m benchmarks.int4_quantizers   # writes results/int4_quantizers.*
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks._results import write_results
from lowprec_jax.formats import Int4, fake_quantize, quantize
from lowprec_jax.formats._hadamard import hadamard_candidates
from lowprec_jax.formats._lsq import lsq_fake_quantize, lsq_initial_step
from lowprec_jax.nn import QuantDotGeneral
from lowprec_jax.ops._leverage import lss_input_gradient, lss_weight_gradient
from pallas_kernels.hadamard import block_hadamard
from train import loop
from train.data import load_corpus, train_batch

TOKENS, FEATURES = 4096, 1024
DRAWS = 1024
N, OUT, K = 256, 64, 96  # gradient estimator shapes: tokens, outputs, inputs


def outlier_activations() -> jax.Array:
  x = jax.random.normal(jax.random.key(0), (TOKENS, FEATURES))
  return x.at[:, 7].mul(30.0).at[:, 300].mul(-20.0).at[:, 801].mul(25.0)


def _lsq(v):
  return lsq_fake_quantize(v, lsq_initial_step(v))


def _absmax(v):
  return fake_quantize(v, Int4.per_tensor())


def hq_errors() -> list[dict]:
  x = outlier_activations()
  rows = []
  for block in hadamard_candidates(FEATURES):
    v = block_hadamard(x, block)
    row = {"block": block}
    for name, q in (("absmax", _absmax), ("lsq_init", _lsq)):
      row[f"{name}_mse"] = float(jnp.mean((q(v) - v) ** 2))
    rows.append(row)
  for row in rows:
    for name in ("absmax", "lsq_init"):
      row[f"{name}_ratio"] = row[f"{name}_mse"] / rows[0][f"{name}_mse"]
  return rows


def chosen_blocks() -> dict[str, int]:
  cfg = loop.TrainConfig(recipe="int4_hq", steps=1)
  graphdef, state, _ = loop.build(cfg)
  train_step, _ = loop.make_steps(graphdef)
  batch = train_batch(
    load_corpus(None),
    seed=cfg.seed,
    step=1,
    batch_size=cfg.batch_size,
    seq_len=cfg.model.seq_len,
  )
  state = train_step(state, jnp.asarray(batch))[0]
  model = nnx.merge(graphdef, state)[0]
  found = {}
  for path, layer in nnx.iter_modules(model):
    dot_general = getattr(layer, "dot_general", None)
    if isinstance(dot_general, QuantDotGeneral):
      index = int(dot_general.hadamard[...][0])
      k = layer.kernel.shape[0]
      found["/".join(map(str, path))] = hadamard_candidates(k)[index]
  return found


def _gradient_problem():
  key = jax.random.key(1)
  k1, k2, k3, k4 = jax.random.split(key, 4)
  g = jax.random.normal(k1, (N, OUT)) * jnp.exp(
    2.0 * jax.random.normal(k2, (N, 1))
  )
  return g, jax.random.normal(k3, (N, K)), jax.random.normal(k4, (OUT, K))


ESTIMATORS = (
  ("plain INT4 SR (1 INT4 GEMM)", None, None),
  ("faithful split + LSS (1 INT4 GEMM)", "faithful", "sample"),
  ("full split + LSS (1 INT4 GEMM)", "full", "sample"),
  ("faithful split, every row (2 INT4 / 1 INT8 GEMM)", "faithful", "nonzero"),
  ("full split, every row (2 INT4 / 1 INT8 GEMM)", "full", "nonzero"),
)


def _draws(split, mode):
  g, x, w = _gradient_problem()

  def one(i):
    k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(2), i))
    if split is None:
      q = quantize(g, Int4.per_tensor(), rounding="stochastic", seed=i)
      gq = q.dequantize()
      return gq.T @ x, gq @ w
    u, us = jax.random.uniform(k1, g.shape), jax.random.uniform(k2, ())
    kw = dict(split=split, mode=mode)
    return (
      lss_weight_gradient(g, x, u, us, **kw),
      lss_input_gradient(g, w, u, us, **kw),
    )

  return jax.lax.map(jax.jit(one), jnp.arange(DRAWS)), (g.T @ x, g @ w)


def _stats(draws, exact) -> tuple[float, float]:
  mean = draws.mean(0, keepdims=True)
  norm2 = float(jnp.sum(exact**2))
  bias = float(jnp.linalg.norm(mean[0] - exact)) / np.sqrt(norm2)
  var = float(jnp.mean(jnp.sum((draws - mean) ** 2, axis=(1, 2)))) / norm2
  return bias, var


def estimators() -> tuple[list[dict], list[dict]]:
  rows, convergence = [], []
  for name, split, mode in ESTIMATORS:
    (dws, dxs), (dw, dx) = _draws(split, mode)
    (bw, vw), (bx, vx) = _stats(dws, dw), _stats(dxs, dx)
    rows.append(
      dict(estimator=name, dw_bias=bw, dw_var=vw, dx_bias=bx, dx_var=vx)
    )
    if (split, mode) == ("full", "sample"):
      for n in (16, 64, 256, 1024):
        err = float(jnp.linalg.norm(dws[:n].mean(0) - dw) / jnp.linalg.norm(dw))
        convergence.append(
          dict(draws=n, dw_bias=err, expected=float(np.sqrt(vw / n)))
        )
  return rows, convergence


def markdown(result: dict, info: dict) -> str:
  out = [
    "INT4 quantizers (`"
    + info["command"]
    + "`, commit "
    + f"{info['commit']}, jax {info['jax']}, {info['device']}).\n",
    f"**Hadamard quantizer** on {TOKENS} x {FEATURES} Gaussian activations "
    "with three outlier channels (20-30x): MSE of per-tensor INT4 after "
    "rotating by blocks of size b, relative to b = 1 (no rotation).\n",
    "| block | absmax MSE | vs b=1 | LSQ (initial step) MSE | vs b=1 |",
    "|---|---|---|---|---|",
  ]
  for r in result["hq"]:
    out.append(
      f"| {r['block']} | {r['absmax_mse']:.4g} | {r['absmax_ratio']:.3f}x "
      f"| {r['lsq_init_mse']:.4g} | {r['lsq_init_ratio']:.3f}x |"
    )
  out += [
    "",
    "**Hadamard block chosen per layer** by `int4_hq`'s search on the first "
    "batch of the default corpus (default GPT of `train/model.py`):\n",
    "| layer | block |",
    "|---|---|",
  ]
  out += [f"| {k} | {v} |" for k, v in result["blocks"].items()]
  out += [
    "",
    f"**Gradient estimators** ({DRAWS} draws; g {N} x {OUT} with row norms "
    f"spread by exp(2 z), x {N} x {K}, w {OUT} x {K}): relative bias and "
    "relative variance (module docstring).\n",
    "| estimator | dw bias | dw variance | dx bias | dx variance |",
    "|---|---|---|---|---|",
  ]
  for r in result["estimators"]:
    out.append(
      f"| {r['estimator']} | {r['dw_bias']:.4f} | {r['dw_var']:.5f} "
      f"| {r['dx_bias']:.4f} | {r['dx_var']:.5f} |"
    )
  out += [
    "",
    "Bias of the full split + LSS mean against the number of draws n "
    "(expected for an unbiased estimator: sqrt(variance / n)):\n",
    "| draws | dw bias | sqrt(var / n) |",
    "|---|---|---|",
  ]
  out += [
    f"| {r['draws']} | {r['dw_bias']:.4f} | {r['expected']:.4f} |"
    for r in result["convergence"]
  ]
  return "\n".join(out) + "\n"


def main() -> None:
  rows, convergence = estimators()
  result = {
    "hq": hq_errors(),
    "blocks": chosen_blocks(),
    "estimators": rows,
    "convergence": convergence,
  }
  write_results(
    "int4_quantizers",
    "benchmarks.int4_quantizers",
    sys.argv[1:],
    result,
    markdown,
  )


if __name__ == "__main__":
  main()
