"""50-step trajectory gap of the quantized AdamWs against ``optax.adamw``.

**Problem.** A student MLP ``x -> W3 gelu(W2 gelu(W1 x))`` (three 256 x 256
matrices, no biases, ``W ~ N(0, 1/256)``) regresses a fixed random teacher of
the same shape on a fresh batch of 64 samples per step, loss
``mean((y_hat - y)^2)``. Inputs are Student-t (3 degrees of freedom) with
log-normal per-feature scales ``exp(N(0, 1) / 2)`` and the teacher's
outputs get such per-output scales: gradients have heavy tails and row / column
structure, as in transformer layers. Seed ``s`` fixes the teacher, the
initialization and every batch, so every optimizer sees the same problem.

**Gap.** With ``theta_0`` the initialization and ``theta_ref`` the
parameters after ``T = 50`` steps of ``optax.adamw`` (fp32; lr 1e-3,
b1 0.9, b2 0.999, eps 1e-8, weight decay 1e-4; all three matrices
concatenated)::

    gap = ||theta_q - theta_ref|| / ||theta_ref - theta_0||

the deviation of a quantized optimizer's parameters relative to the
reference displacement, averaged over ``--seeds`` seeds (min / max kept).
Quantized optimizers run with every matrix quantized
(``quantize_mask=lambda p: jax.tree.map(lambda _: True, p)``).

**Variants.** Library rows are the shipped aliases and ``adamw_quantized``
with public formats (4-bit m with 8-bit v and the converse, attributes the
gap; 4-bit v at groups 32 / 64 / 128). Prototype rows run an emulated AdamW
whose state holds the dequantized moments ``D(Q(.))`` (the library's
arithmetic: ``m_t = b1 D(mu_{t-1}) + (1 - b1) g``, ``u`` from the float32
``m_t, v_t``, then ``mu_t = Q(m_t)``), with quantizers written here:

* ``block G``: ``A`` = absmax of G consecutive elements of a row;
* ``rank-1`` (Li et al. 2023): ``s_ij = min(max_k |x_ik|, max_k |x_kj|)``;
* codebooks: signed 4-bit dynamic (m), ``j/16, j=1..16`` (linear, no zero),
  ``j/15, j=0..15`` (linear with zero), unsigned 8-bit dynamic;
* ``sqrt``: v is stored as ``sqrt(v)`` on the map and squared back;
* ``SR``: stochastic rounding between the two neighbouring codes,
  ``P(up) = (y - c_lo) / (c_hi - c_lo)`` (unbiased).

The emulated 4-bit default (block 128 m and v) must reproduce ``adamw_4bit``:
it is a row of the table.

**Staleness.** In the emulated runs, for each moment and step, with
``p = D(Q(x_{t-1}))`` the stored value and ``x_t`` its float32 EMA update:
an element is *moved* if ``|x_t - p| > X |p|`` and *stale* if moved but
its stored code is unchanged (the update did not register; codes, not
values, since a new block scale moves values of unchanged codes). Reported: stale / moved
and stale / all element-steps over steps 2..T, for X in ``--thresholds``,
over a longer run (``--stale-steps``), with and without SR, and the gap
at that horizon.

  python -m benchmarks.optim_trajectory   # results/optim_trajectory.{json,md}
"""

import argparse
import math
import pathlib
import sys
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._results import write_results
from lowprec_jax.optim import (
  Codebook,
  Fp8Dre,
  adamw_4bit,
  adamw_8bit,
  adamw_fp8,
  adamw_quantized,
  quantize_moment,
)

WIDTH, LAYERS, BATCH = 256, 3, 64
DF, SIGMA = 3.0, 0.5  # Student-t inputs; log-normal scales exp(SIGMA N(0, 1))
LR, B1, B2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 1e-4
QUANTIZE_ALL = lambda p: jax.tree.map(lambda _: True, p)  # noqa: E731

# ---------------------------------------------------------------- problem ----


def _problem(seed):
  """(theta_0, teacher, input scales, output scales) of seed ``seed``."""
  key = jax.random.key(seed)
  k_student, k_teacher, k_in, k_out = jax.random.split(key, 4)
  init = lambda k: [  # noqa: E731
    jax.random.normal(kk, (WIDTH, WIDTH)) / math.sqrt(WIDTH)
    for kk in jax.random.split(k, LAYERS)
  ]
  scale_in = jnp.exp(SIGMA * jax.random.normal(k_in, (WIDTH,)))
  scale_out = jnp.exp(SIGMA * jax.random.normal(k_out, (WIDTH,)))
  return init(k_student), init(k_teacher), scale_in, scale_out


def _forward(params, x):
  for w in params[:-1]:
    x = jax.nn.gelu(x @ w.T)
  return x @ params[-1].T


def _batch(seed, step, teacher, scale_in, scale_out):
  key = jax.random.fold_in(jax.random.key(seed + 1_000_003), step)
  x = jax.random.t(key, DF, (BATCH, WIDTH)) * scale_in
  return x, _forward(teacher, x) * scale_out


def _loss(params, x, y):
  return jnp.mean((_forward(params, x) - y) ** 2)


def trajectory(tx, seeds, steps):
  """(theta_0, theta_T) per seed (leading axis) after ``steps`` of ``tx``."""

  def one(seed):
    params, teacher, scale_in, scale_out = _problem(seed)

    def body(carry, step):
      params, state = carry
      x, y = _batch(seed, step, teacher, scale_in, scale_out)
      grads = jax.grad(_loss)(params, x, y)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    (final, state), _ = jax.lax.scan(
      body, (params, tx.init(params)), jnp.arange(steps)
    )
    return jnp.stack(params), jnp.stack(final), state

  return jax.jit(jax.vmap(one))(jnp.asarray(seeds))


def gaps(theta_0, theta_ref, theta_q):
  """Per-seed ||theta_q - theta_ref|| / ||theta_ref - theta_0||."""
  norm = lambda x: jnp.sqrt(jnp.sum(x.reshape(x.shape[0], -1) ** 2, -1))  # noqa: E731
  return np.asarray(norm(theta_q - theta_ref) / norm(theta_ref - theta_0))


# ------------------------------------------------------------- quantizers ----


def _round(y, codebook, key):
  """Index of the nearest code of ``y`` in the sorted ``codebook``, or of a
  stochastically rounded one if ``key``."""
  c = jnp.asarray(codebook, jnp.float32)
  if key is None:
    return jnp.searchsorted((c[:-1] + c[1:]) / 2, y)
  lo = jnp.clip(jnp.searchsorted(c, y, side="right") - 1, 0, c.size - 2)
  p_up = jnp.clip((y - c[lo]) / (c[lo + 1] - c[lo]), 0.0, 1.0)
  return lo + (jax.random.uniform(key, y.shape) < p_up)


def _block_scale(x, group):
  a = jnp.max(jnp.abs(x.reshape(*x.shape[:-1], -1, group)), -1, keepdims=True)
  return jnp.broadcast_to(a, (*a.shape[:-1], group)).reshape(x.shape)


def _rank1_scale(x):
  a = jnp.abs(x)
  return jnp.minimum(a.max(1, keepdims=True), a.max(0, keepdims=True))


class Quantizer(NamedTuple):
  """``(D(Q(x)), code)`` of a codebook format: scale rule, codebook, domain,
  SR."""

  codebook: tuple[float, ...]
  scale: str = "block"  # "block" or "rank1"
  group: int = 128
  sqrt: bool = False  # store sqrt(x) (second moments)
  stochastic: bool = False

  def __call__(self, x, key):
    y = jnp.sqrt(x) if self.sqrt else x
    s = (
      _rank1_scale(y) if self.scale == "rank1" else _block_scale(y, self.group)
    )
    safe = jnp.where(s > 0, s, 1.0)
    code = _round(y / safe, self.codebook, key if self.stochastic else None)
    out = jnp.asarray(self.codebook, jnp.float32)[code] * s
    return (out**2 if self.sqrt else out), code


class Library(NamedTuple):
  """``(D(Q(x)), code)`` of a library format (``quantize_moment``); codes as
  uint8, 4-bit ones unpacked to the element order."""

  fmt: object

  def __call__(self, x, key):
    del key
    q = quantize_moment(x, self.fmt)
    code = jax.lax.bitcast_convert_type(q.codes, jnp.uint8)
    if code.shape != x.shape:  # 4-bit: byte k of a group holds k, k + G/2
      byte = code.reshape(*x.shape[:-1], -1, self.fmt.group // 2)
      code = jnp.concatenate([byte & 15, byte >> 4], -1).reshape(x.shape)
    return q.dequantize(), code


def _identity(x, key):
  del key
  return x, x


DYN4 = Codebook(bits=4, signed=True, group=128).values()
DYN8_U = Codebook(bits=8, signed=False, group=256).values()
LIN16 = Codebook(bits=4, map="linear", signed=False, group=128).values()
LIN15_ZERO = tuple(float(j) / 15 for j in range(16))
LOG_HALF = tuple(2.0 ** (-j / 2) for j in range(15, -1, -1))
LIN7_SIGNED = tuple(float(j) / 7 for j in range(-7, 8))


# ------------------------------------------------------- emulated AdamW ----


class EmulatedState(NamedTuple):
  count: jax.Array
  mu: list  # D(Q(m)) (of m / sqrt(D(Q(v))) when normalized)
  nu: list
  codes: list  # (mu code, nu code) per leaf
  key: jax.Array
  moved: jax.Array  # (moment, threshold) element-step counts
  stale: jax.Array


def emulated_adamw(
  q_mu: Callable,
  q_nu: Callable,
  *,
  mu_over_sqrt_nu: bool = False,
  thresholds=(),
  seed: int = 0,
) -> optax.GradientTransformation:
  """``optax.adamw`` whose moments are stored as ``q(x, key)[0]`` between
  steps (``q`` returns the dequantized value and the code).

  ``mu_over_sqrt_nu``: store ``r = m / sqrt(D(Q(v)))`` (quantized by
  ``q_mu``) and read ``m = D(Q(r)) sqrt(D(Q(v)))``. Staleness counters: see
  the module docstring.
  """
  thr = jnp.asarray(thresholds, jnp.float32)

  def init(params):
    zeros = [jnp.zeros_like(p) for p in params]
    codes = [(q_mu(z, None)[1], q_nu(z, None)[1]) for z in zeros]
    counters = jnp.zeros((2, thr.size), jnp.float32)
    key = jax.random.key(seed)
    return EmulatedState(
      jnp.zeros([], jnp.int32), zeros, zeros, codes, key, *[counters] * 2
    )

  def counts(prev, x, code_prev, code, later):
    moved = jnp.abs(x - prev)[..., None] > thr * jnp.abs(prev)[..., None]
    stale = moved & (code == code_prev)[..., None]
    return [jnp.sum(a, axis=(0, 1)) * later for a in (moved, stale)]

  def update(grads, state, params):
    count = state.count + 1
    key, *keys = jax.random.split(state.key, 1 + 2 * len(grads))
    moved, stale = state.moved, state.stale
    mus, nus, codes, out = [], [], [], []
    leaves = zip(grads, state.mu, state.nu, state.codes, params)
    for i, (g, mu, nu, code_prev, p) in enumerate(leaves):
      root = jnp.sqrt(nu) if mu_over_sqrt_nu else 1.0
      m = B1 * mu * root + (1 - B1) * g
      v = B2 * nu + (1 - B2) * g * g
      u = (m / (1 - B1**count)) / (jnp.sqrt(v / (1 - B2**count)) + EPS)
      out.append(-LR * (u + WD * p))
      nu_t, code_nu = q_nu(v, keys[2 * i + 1])
      if mu_over_sqrt_nu:
        root = jnp.sqrt(nu_t)
        m = m / jnp.where(root > 0, root, 1.0)
      mu_t, code_mu = q_mu(m, keys[2 * i])
      code = (code_mu, code_nu)
      for j, (prev, x) in enumerate(((mu, m), (nu, v))):
        is_moved, is_stale = counts(prev, x, code_prev[j], code[j], count > 1)
        moved = moved.at[j].add(is_moved)
        stale = stale.at[j].add(is_stale)
      mus.append(mu_t)
      nus.append(nu_t)
      codes.append(code)
    return out, EmulatedState(count, mus, nus, codes, key, moved, stale)

  return optax.GradientTransformation(init, update)


# ------------------------------------------------------------------ cases ----

M4 = Codebook(bits=4, signed=True, group=128)
V4 = Codebook(bits=4, map="linear", signed=False, group=128)
M8 = Codebook(bits=8, signed=True, group=128)
V8 = Codebook(bits=8, signed=False, group=128)
DYN8 = Codebook(bits=8, signed=True, group=256).values()


def _quantized(mu_format, nu_format):
  return adamw_quantized(
    LR,
    B1,
    B2,
    EPS,
    weight_decay=WD,
    quantize_mask=QUANTIZE_ALL,
    mu_format=mu_format,
    nu_format=nu_format,
  )


def _alias(factory):
  return factory(LR, B1, B2, EPS, weight_decay=WD, quantize_mask=QUANTIZE_ALL)


def _group(fmt, group):
  return Codebook(bits=fmt.bits, map=fmt.map, signed=fmt.signed, group=group)


LIBRARY = {
  "adamw_fp8 (E4M3+DRE, group 128)": lambda: _alias(adamw_fp8),
  "adamw_8bit (dynamic, group 256)": lambda: _alias(adamw_8bit),
  "adamw_4bit (m dyn4, v j/16; group 128)": lambda: _alias(adamw_4bit),
  "4-bit m, 8-bit v (group 128)": lambda: _quantized(M4, V8),
  "8-bit m, 4-bit v (group 128)": lambda: _quantized(M8, V4),
  "4-bit m, fp32 v": lambda: _quantized(M4, None),
  "fp32 m, 4-bit v": lambda: _quantized(None, V4),
  "adamw_4bit formats, group 64": lambda: _quantized(
    _group(M4, 64), _group(V4, 64)
  ),
  "adamw_4bit formats, group 32": lambda: _quantized(
    _group(M4, 32), _group(V4, 32)
  ),
}
V_VARIANTS = {
  "j/16, block 128 (default)": Quantizer(LIN16),
  "j/15 with zero, block 128": Quantizer(LIN15_ZERO),
  "j/16, rank-1": Quantizer(LIN16, scale="rank1"),
  "sqrt, j/16, block 128": Quantizer(LIN16, sqrt=True),
  "sqrt, j/16, rank-1": Quantizer(LIN16, sqrt=True, scale="rank1"),
  "2^(-j/2), block 128": Quantizer(LOG_HALF),
  "2^(-j/2), rank-1": Quantizer(LOG_HALF, scale="rank1"),
}
V_BEST = "2^(-j/2), rank-1"
V_M = {
  "fp32 m": _identity,
  "8-bit m (dyn, block 128)": Quantizer(M8.values()),
  "4-bit m (dyn4, block 128)": Quantizer(DYN4),
}
M_VARIANTS = {  # name: (quantizer, mu_over_sqrt_nu)
  "dyn4, block 128 (default)": (Quantizer(DYN4), False),
  "dyn4, block 32": (Quantizer(DYN4, group=32), False),
  "dyn4, rank-1": (Quantizer(DYN4, scale="rank1"), False),
  "dyn4, block 128, SR": (Quantizer(DYN4, stochastic=True), False),
  "m/sqrt(v), j/7, block 128": (Quantizer(LIN7_SIGNED), True),
  "m/sqrt(v), j/7, block 32": (Quantizer(LIN7_SIGNED, group=32), True),
  "m/sqrt(v), j/7, rank-1": (Quantizer(LIN7_SIGNED, scale="rank1"), True),
}
M_V = {"fp32 v": _identity, f"v {V_BEST}": V_VARIANTS[V_BEST]}
STALENESS = {  # name: (q_mu, q_nu)
  "fp8 (E4M3+DRE)": (Library(Fp8Dre()), Library(Fp8Dre())),
  "8-bit (dynamic, 256)": (
    Library(Codebook(bits=8, signed=True, group=256)),
    Library(Codebook(bits=8, signed=False, group=256)),
  ),
  "8-bit, SR": (
    Quantizer(DYN8, group=256, stochastic=True),
    Quantizer(DYN8_U, group=256, stochastic=True),
  ),
  "4-bit (adamw_4bit)": (Quantizer(DYN4), Quantizer(LIN16)),
  "4-bit, SR": (
    Quantizer(DYN4, stochastic=True),
    Quantizer(LIN16, stochastic=True),
  ),
}


# ---------------------------------------------------------------- measure ----


def _stats(g) -> dict:
  return {
    "mean": float(g.mean()),
    "min": float(g.min()),
    "max": float(g.max()),
    "per_seed": [float(x) for x in g],
  }


def measure(seeds, steps, stale_steps, thresholds) -> dict:
  reference = optax.adamw(LR, B1, B2, EPS, weight_decay=WD)
  theta_0, theta_ref, _ = trajectory(reference, seeds, steps)
  norm = np.sqrt(np.sum(np.asarray(theta_ref - theta_0) ** 2, axis=(1, 2, 3)))
  gap = lambda tx: _stats(
    gaps(theta_0, theta_ref, trajectory(tx, seeds, steps)[1])
  )  # noqa: E731
  result = {
    "reference_displacement": _stats(norm),
    "library": {name: gap(make()) for name, make in LIBRARY.items()},
    "v_variants": {
      v: {m: gap(emulated_adamw(q_m, q_v)) for m, q_m in V_M.items()}
      for v, q_v in V_VARIANTS.items()
    },
    "m_variants": {
      m: {
        v: gap(emulated_adamw(q_m, q_v, mu_over_sqrt_nu=normalized))
        for v, q_v in M_V.items()
      }
      for m, (q_m, normalized) in M_VARIANTS.items()
    },
  }
  _, theta_long, _ = trajectory(reference, seeds, stale_steps)
  staleness = {}
  for name, (q_mu, q_nu) in STALENESS.items():
    tx = emulated_adamw(q_mu, q_nu, thresholds=thresholds)
    _, theta, state = trajectory(tx, seeds, stale_steps)
    moved = np.asarray(state.moved).sum(0)  # (moment, threshold)
    stale = np.asarray(state.stale).sum(0)
    total = len(seeds) * LAYERS * WIDTH * WIDTH * (stale_steps - 1)
    staleness[name] = {
      "gap_at_steps": _stats(
        gaps(theta_0, theta_ref, trajectory(tx, seeds, steps)[1])
      ),
      "gap_at_stale_steps": _stats(gaps(theta_0, theta_long, theta)),
      **{
        moment: {
          f"{x:g}": {
            "moved_fraction": float(moved[j, k] / total),
            "stale_of_moved": float(stale[j, k] / max(moved[j, k], 1)),
            "stale_fraction": float(stale[j, k] / total),
          }
          for k, x in enumerate(thresholds)
        }
        for j, moment in enumerate(("m", "v"))
      },
    }
  result["staleness"] = staleness
  return result


# --------------------------------------------------------------- markdown ----


def _pct(s: dict) -> str:
  return f"{100 * s['mean']:.1f}% ({100 * s['min']:.1f}-{100 * s['max']:.1f})"


def _grid(rows: dict, head: str) -> list[str]:
  cols = list(next(iter(rows.values())))
  lines = [
    f"| {head} | " + " | ".join(cols) + " |",
    "|---" * (len(cols) + 1) + "|",
  ]
  for name, cells in rows.items():
    lines.append(
      f"| {name} | " + " | ".join(_pct(cells[c]) for c in cols) + " |"
    )
  return lines


def markdown(result: dict, info: dict) -> str:
  cfg = result["config"]
  eight = result["library"]["adamw_8bit (dynamic, group 256)"]["mean"]
  lines = [
    f"{cfg['steps']}-step trajectory gap ||theta_q - theta_ref|| / "
    f"||theta_ref - theta_0|| against optax.adamw (lr {LR}, b1 {B1}, b2 {B2}, "
    f"eps {EPS}, wd {WD}), mean (min-max) over seeds {cfg['seeds']}; "
    f"3-layer 256-wide MLP student-teacher, Student-t({DF:g}) inputs, "
    f"log-normal scales sigma {SIGMA:g}, batch {BATCH}. "
    f"`{info['command']}`, commit {info['commit']}, jax {info['jax']}, "
    f"{info['device']}. Reference displacement "
    f"{result['reference_displacement']['mean']:.3f}. Target (3x adamw_8bit): "
    f"{300 * eight:.1f}%.",
    "",
    "**Library optimizers and formats** (every matrix quantized):",
    "",
    "| optimizer | gap |",
    "|---|---|",
    *(f"| {n} | {_pct(s)} |" for n, s in result["library"].items()),
    "",
    "**4-bit second-moment variants** (emulated; rows: v format, columns: m):",
    "",
    *_grid(result["v_variants"], "v format \\ m"),
    "",
    "**4-bit first-moment variants** (emulated; rows: m format, columns: v):",
    "",
    *_grid(result["m_variants"], "m format \\ v"),
    "",
    f"**Staleness** over {cfg['stale_steps']} steps (element-steps 2..T, both "
    "moments): moved = |x_t - p| > X |p| (p the stored value, x_t its fp32 "
    "EMA update); stale = moved but the stored code unchanged. Gaps at "
    f"{cfg['steps']} and {cfg['stale_steps']} steps.",
    "",
    "| format | moment | X | moved | stale / moved | stale / all |",
    "|---|---|---|---|---|---|",
  ]
  for name, s in result["staleness"].items():
    for moment in ("m", "v"):
      for x, c in s[moment].items():
        lines.append(
          f"| {name} | {moment} | {x} | {100 * c['moved_fraction']:.1f}% | "
          f"{100 * c['stale_of_moved']:.1f}% | {100 * c['stale_fraction']:.1f}% |"
        )
  lines += [
    "",
    f"| format | gap at {cfg['steps']} | gap at {cfg['stale_steps']} |",
    "|---|---|---|",
    *(
      f"| {n} | {_pct(s['gap_at_steps'])} | {_pct(s['gap_at_stale_steps'])} |"
      for n, s in result["staleness"].items()
    ),
  ]
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1")
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--stale-steps", type=int, default=200)
  parser.add_argument(
    "--thresholds",
    type=float,
    nargs="+",
    default=[0.001, 0.01],
    help="relative EMA changes X of the staleness count",
  )
  parser.add_argument("--out", type=pathlib.Path, default=None)
  argv = sys.argv[1:] if argv is None else argv
  args = parser.parse_args(argv)
  seeds = list(range(args.seeds))
  result = {
    "config": {
      "seeds": seeds,
      "steps": args.steps,
      "stale_steps": args.stale_steps,
      "thresholds": args.thresholds,
      "problem": {
        "width": WIDTH,
        "layers": LAYERS,
        "batch": BATCH,
        "df": DF,
        "sigma": SIGMA,
      },
      "adamw": {"lr": LR, "b1": B1, "b2": B2, "eps": EPS, "weight_decay": WD},
    },
    **measure(seeds, args.steps, args.stale_steps, args.thresholds),
  }
  write_results(
    "optim_trajectory",
    "benchmarks.optim_trajectory",
    argv,
    result,
    markdown,
    args.out,
  )


if __name__ == "__main__":
  main()
