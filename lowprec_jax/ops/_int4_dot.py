"""int4_dot_general: INT4 training GEMMs (Hadamard quantizer forward, bit-split
and leverage-sampled backward) as one ``custom_vjp``.

In the canonical layout (``_dimension_numbers``) ``x`` (B, M, K), ``w``
(B, N, K), ``H`` the block-diagonal Hadamard of the chosen block (along K,
``H = H^T = H^-1``, :mod:`pallas_kernels.hadamard`):

* forward: ``v_x = x H``, ``v_w = w H``; both quantized to INT4 (LSQ with
  learned per-tensor steps, or absmax blocks: :class:`Int4Config`); one
  INT8-tensor-core GEMM on the unpacked codes, ``out = Q(v_x) Q(v_w)^T``
  (int32 partial sums, fp32 rescale per block). Residuals: the packed codes
  (plus, for LSQ, the packed derivative codes of :mod:`..formats._lsq`), the
  scales, the block index and the seed;
* backward: ``g`` (B, M, N) is bit-split once (:mod:`pallas_kernels.bit_split`,
  per-tensor ``sigma``), then

  - ``sampling="all"``: ``dv_x = c Q(v_w) / sigma`` and ``dv_w = c^T Q(v_x)
    / sigma`` with ``c = 14 hi + lo`` (int8): one INT8 GEMM each;
  - ``sampling="leverage"``: ``dv_x`` from the rows of ``[14 hi; lo]``
    sampled with scores ``||r_i||`` (two GEMMs, hi and lo, whose output rows
    are scaled by the kept rows' ``1/p``), ``dv_w`` from rows sampled with
    ``||r_i|| ||Q(v_x)_i||``, the kept rows times ``1/p`` requantized to
    INT8 with stochastic rounding (unbiased) and one INT8 GEMM over the
    static budget of M rows (:mod:`._leverage`);

  then the STE (LSQ: masked to the unclipped range, plus the step
  gradients), and ``dx = dv_x H``, ``dw = dv_w H``.

Every GEMM is a ``lowprec_gemm`` call tagged for the census, on int8
tensor cores (INT4 codes unpacked inside the call). The rotation,
quantization, bit split and GEMMs run in one of the implementations of
:mod:`._int4_implementation` (``"xla"``, ``"pallas"``), bit-identical.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.ad_checkpoint import checkpoint_name

from lowprec_jax.formats._format import Int4
from lowprec_jax.formats._hadamard import (
  choose_hadamard_block,
  hadamard_candidates,
  switch_on_block,
)
from lowprec_jax.formats._lsq import (
  lsq_derivatives,
  lsq_fake_quantize,
  lsq_gradient_scale,
  lsq_initial_step,
)
from lowprec_jax.formats._quantize import fake_quantize
from lowprec_jax.ops._census import GemmTag
from lowprec_jax.ops._dimension_numbers import canonicalize
from lowprec_jax.ops._dot_general import _out_dtype, lowprec_gemm
from lowprec_jax.ops._int4_config import Int4Config
from lowprec_jax.ops._int4_implementation import (
  INT4_GEMMS,
  GemmOperand,
  Int4Implementation,
  per_tensor,
)
from lowprec_jax.ops._leverage import row_norms, systematic_sample, water_fill
from pallas_kernels import tiles
from pallas_kernels.bit_split import split_sigma
from pallas_kernels.checks import as_seed, check_float_array
from pallas_kernels.hadamard import block_hadamard
from pallas_kernels.int4_matmul import Int4Operand
from pallas_kernels.numerics import (
  NumberGrid,
  derive_seed,
  finite_absmax,
  random_bits,
  reduced_tile_scale,
  uniform_from_bits,
)

_SALT_SPLIT, _SALT_DGRAD, _SALT_WGRAD, _SALT_REQUANT = 11, 12, 13, 14


@dataclasses.dataclass(frozen=True)
class _Plan:
  config: Int4Config
  candidates: tuple[int, ...]
  lhs_dtype: np.dtype
  rhs_dtype: np.dtype
  out_dtype: np.dtype
  implementation: Int4Implementation
  rhs_kn: bool  # w arrives (B, K, N): read and written so, never copied


def _rotate(x: Array, index: Array, candidates) -> Array:
  return switch_on_block(
    index, candidates, lambda b, v: block_hadamard(v, b), x
  )


def _lsq_search_quantizer(v: Array) -> Array:
  return lsq_fake_quantize(v, lsq_initial_step(v))


def choose_block(x3: Array, w3: Array, config: Int4Config) -> Array:
  """The Hadamard block index (into ``hadamard_candidates``) minimising
  ``||X_hat - X|| ||W_hat - W||`` for x (B, M, K) and w (B, N, K), each
  quantized as the forward will: LSQ at its initial step, or the config's
  absmax format."""
  if config.scale == "lsq":
    quantizer = _lsq_search_quantizer
  else:
    quantizer = functools.partial(fake_quantize, format=config.format)
  index, _, _ = choose_hadamard_block(
    x3, w3, quantizer=quantizer, candidates=config.hadamard_blocks
  )
  return index


def initial_steps(
  x3: Array, w3: Array, index: Array, candidates: tuple[int, ...]
) -> Array:
  """LSQ's initial steps ``2 mean|v| / sqrt(7)`` of the rotated x and w, (2,)."""
  return jnp.stack(
    [
      lsq_initial_step(_rotate(x3, index, candidates)),
      lsq_initial_step(_rotate(w3, index, candidates)),
    ]
  )


# ----------------------------------------------------------------- forward


def _gemm(role, plan, formats, a: GemmOperand, b: GemmOperand, out_dtype):
  """One census-tagged GEMM call (``formats``: lhs and rhs names)."""
  bsz, m, k = a.layout.logical_shape(a.codes.shape)
  n = b.layout.logical_shape(b.codes.shape)[1]
  impl = plan.implementation.name
  tag = GemmTag(
    role=role,
    implementation=impl,
    lhs_format=formats[0],
    rhs_format=formats[1],
    lhs_quantizer=plan.implementation.quantizer,
    rhs_quantizer=plan.implementation.quantizer,
    shape=f"{bsz}x{m}x{n}x{k}",
  )
  with jax.named_scope(str(tag)):
    return lowprec_gemm(
      a,
      b,
      impl=plan.implementation,
      out_dtype=np.dtype(out_dtype),
      precision=None,
    )


def _forward(x3, w3, steps, index, plan: _Plan):
  cfg, impl = plan.config, plan.implementation
  a, a_d = impl.rotate_quantize(x3, index, plan.candidates, steps[0], cfg)
  b, b_d = impl.rotate_quantize(
    w3, index, plan.candidates, steps[1], cfg, transposed=plan.rhs_kn
  )
  name = cfg.operand_name
  out = _gemm("fwd", plan, (name, name), a, b, plan.out_dtype)
  return out, (a, a_d, b, b_d)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _int4_qdot(x3, w3, steps, index, seed, plan):
  return _forward(x3, w3, steps, index, plan)[0]


def _named(op: GemmOperand, d, side: str):
  op = GemmOperand(
    checkpoint_name(op.codes, f"lowprec_{side}"),
    checkpoint_name(op.scale, f"lowprec_{side}_scale"),
    op.layout,
  )
  if d is not None:
    d = checkpoint_name(d, f"lowprec_{side}_lsq")
  return op, d


def _int4_qdot_fwd(x3, w3, steps, index, seed, plan):
  out, (a, a_d, b, b_d) = _forward(x3, w3, steps, index, plan)
  a, a_d = _named(a, a_d, "lhs")
  b, b_d = _named(b, b_d, "rhs")
  res = (a, a_d, b, b_d, steps, index, checkpoint_name(seed, "lowprec_seed"))
  return out, res


# ---------------------------------------------------------------- backward


def _uniforms(seed, salt, shape) -> Array:
  row, col = tiles.element_coordinates(shape)
  return uniform_from_bits(random_bits(derive_seed(seed, salt), row, col))


def _backward_all(g_formats, plan, c: GemmOperand, a, b):
  """dv_x, dv_w from one INT8 GEMM each on c = 14 hi + lo (B, M, N); the
  saved operands are read transposed where they are stored."""
  dv_x = _gemm("dlhs", plan, g_formats[0], c, b.transposed(), jnp.float32)
  dv_w = _gemm(
    "drhs", plan, g_formats[1], c.transposed(), a.transposed(), jnp.float32
  )
  return dv_x, dv_w


def _backward_leverage(g_formats, plan, parts, inv_sigma, a, b, seed):
  """dv_x, dv_w with static-size leverage-score sampling (module doc)."""
  hi, lo, squares = parts
  bsz, m, _ = hi.shape
  norms = jnp.sqrt(squares.astype(jnp.float32))  # of the rows of [14 hi; lo]
  u_dgrad = uniform_from_bits(
    random_bits(derive_seed(seed, _SALT_DGRAD), jnp.arange(bsz), 0)
  )
  u_wgrad = uniform_from_bits(
    random_bits(derive_seed(seed, _SALT_WGRAD), jnp.arange(bsz), 0)
  )

  # dgrad: factors b_i / p_i on the output rows of the hi and lo GEMMs.
  def dgrad_factors(score, u):
    index, weights = systematic_sample(water_fill(score, m), m, u)
    return jnp.zeros((2 * m,), jnp.float32).at[index].add(weights)

  factors = jax.vmap(dgrad_factors)(norms, u_dgrad)  # (B, 2M)
  w_t = b.transposed()
  hi_part = _gemm(
    "dlhs", plan, g_formats[0], per_tensor(hi, inv_sigma), w_t, jnp.float32
  )
  lo_part = _gemm(
    "dlhs", plan, g_formats[0], per_tensor(lo, inv_sigma), w_t, jnp.float32
  )
  dv_x = (
    hi_part * (14.0 * factors[:, :m, None]) + lo_part * factors[:, m:, None]
  )

  # wgrad: sample rows of [14 hi; lo] with x's rows duplicated.
  x_codes, _ = a.materialized()  # per-tensor scale (leverage needs it)
  x_norms = row_norms(x_codes)
  scores = norms * jnp.concatenate([x_norms, x_norms], axis=1)
  rows = jnp.concatenate(
    [hi.astype(jnp.float32) * 14.0, lo.astype(jnp.float32)], axis=1
  )  # (B, 2M, N)

  def wgrad_rows(score, r, u):
    index, weights = systematic_sample(water_fill(score, m), m, u)
    return r[index] * weights[:, None], index % m

  kept, x_rows = jax.vmap(wgrad_rows)(scores, rows, u_wgrad)  # (B, M, N)
  # 1/p folded into the kept rows, requantized to INT8 by SR (unbiased).
  u_requant = _uniforms(seed, _SALT_REQUANT, kept.shape)
  codes, scale = _sr_int8(kept, u_requant)
  # The kept token rows of x's packed codes (rows of (B, M, K/2)).
  x_kept = jnp.take_along_axis(a.codes, x_rows[:, :, None], axis=1)
  dv_w = _gemm(
    "drhs",
    plan,
    g_formats[1],
    per_tensor(codes, scale * inv_sigma).transposed(),
    GemmOperand(x_kept, a.scale, a.layout).transposed(),
    jnp.float32,
  )
  return dv_x, dv_w


def _sr_int8(x: Array, u: Array) -> tuple[Array, Array]:
  """Per-tensor INT8 codes of x by stochastic rounding with uniforms u."""
  grid = NumberGrid.int8()
  absmax, ok = finite_absmax(x, keepdims=True)
  scale, inverse = reduced_tile_scale(jnp.where(ok, absmax, jnp.inf), grid.qmax)
  return grid.round(x * inverse, u), scale


def _lsq_backward(dv: Array, op: GemmOperand, d: Array):
  """(masked STE gradient, the step's gradient) of one LSQ operand."""
  fmt = Int4()
  mask, d_step = lsq_derivatives(op.materialized()[0], fmt.unpack(d))
  scale = lsq_gradient_scale(int(np.prod(dv.shape)))
  return dv * mask, jnp.sum(dv * d_step) * scale


def _int4_qdot_bwd(plan: _Plan, res, g):
  a, a_d, b, b_d, steps, index, seed = res
  cfg = plan.config
  split_seed = derive_seed(seed, _SALT_SPLIT)
  name = cfg.gradient_name
  g_formats = ((name, cfg.operand_name), (name, cfg.operand_name))
  if cfg.split_block is not None:  # a sigma per block (sampling "all")
    c, sigma = plan.implementation.split_blocks(
      g, split_seed, cfg.split, cfg.split_block
    )
    tile = (cfg.split_block, cfg.split_block)
    c = GemmOperand(c, 1.0 / sigma, Int4Operand(tile))
    dv_x, dv_w = _backward_all(g_formats, plan, c, a, b)
  elif cfg.sampling == "all":
    sigma = split_sigma(g, cfg.split)
    c = plan.implementation.split(g, sigma, split_seed, cfg.split, False)
    c = per_tensor(c, 1.0 / sigma)
    dv_x, dv_w = _backward_all(g_formats, plan, c, a, b)
  else:
    sigma = split_sigma(g, cfg.split)
    parts = plan.implementation.split(g, sigma, split_seed, cfg.split, True)
    inv_sigma = 1.0 / sigma
    dv_x, dv_w = _backward_leverage(
      g_formats, plan, parts, inv_sigma, a, b, seed
    )
  d_steps = jnp.zeros_like(steps)
  if cfg.scale == "lsq":
    (dv_x, dstep_x), (dv_w, dstep_w) = (
      _lsq_backward(dv_x, a, a_d),
      (_lsq_backward(dv_w, b, b_d)),
    )
    d_steps = jnp.stack([dstep_x, dstep_w]) * jnp.sign(steps)  # of |step|
  impl = plan.implementation
  dx = impl.rotate(dv_x, index, plan.candidates, plan.lhs_dtype)
  dw = impl.rotate(
    dv_w, index, plan.candidates, plan.rhs_dtype, transposed_out=plan.rhs_kn
  )
  return dx, dw, d_steps, None, None


_int4_qdot.defvjp(_int4_qdot_fwd, _int4_qdot_bwd)


# -------------------------------------------------------------------- API


def int4_dot_general(
  lhs: Array,
  rhs: Array,
  dimension_numbers,
  precision=None,
  preferred_element_type=None,
  *,
  config: Int4Config,
  block_index: Array | None = None,
  steps: Array | None = None,
  seed=None,
  implementation=None,
) -> Array:
  """``lax.dot_general`` trained in INT4 (module docstring).

  Args:
    lhs, rhs: float32, bfloat16 or float16 arrays.
    dimension_numbers: as for ``lax.dot_general``. The contraction size K
      must be even (codes are packed two per byte along K) and a multiple
      of at least one of ``config.hadamard_blocks``.
    precision: ignored (every GEMM is quantized).
    preferred_element_type: output dtype; default the promoted input dtype.
    config: an :class:`Int4Config`.
    block_index: int32 index into ``hadamard_candidates(K,
      config.hadamard_blocks)`` of the Hadamard block; None chooses it from
      this call's operands (:func:`choose_block`).
    steps: (2,) float32 LSQ steps of x and w (differentiable), required for
      ``scale="lsq"`` (:class:`lowprec_jax.nn.QuantDotGeneral` learns them);
      ignored for "absmax".
    seed: required: an int, a uint32 scalar or a PRNG key.
    implementation: "pallas", "mosaic", "xla", a sequence of them, or None
      (on a GPU pallas then xla, elsewhere xla): see
      :mod:`lowprec_jax.ops._int4_implementation` ("mosaic": the Hopper
      INT4 GEMMs with the portable quantizers).

  Returns:
    An array of shape ``batch + lhs_free + rhs_free``.
  """
  if not isinstance(config, Int4Config):
    raise ValueError(f"config must be an Int4Config, got {config!r}")
  impl = INT4_GEMMS.resolve(implementation, config, f"config {config.name!r}")
  check_float_array("lhs", lhs)
  check_float_array("rhs", rhs)
  layout = canonicalize(lhs, rhs, dimension_numbers)
  k = layout.bmnk[3]
  if k % 2:
    raise ValueError(
      f"INT4 codes are packed two per byte along the contraction, which "
      f"must be even: lhs {lhs.shape} and rhs {rhs.shape} contract over "
      f"K={k}"
    )
  candidates = hadamard_candidates(k, config.hadamard_blocks)
  if not candidates:
    raise ValueError(
      f"no Hadamard block of {config.hadamard_blocks} divides the "
      f"contraction size K={k} (lhs {lhs.shape}, rhs {rhs.shape})"
    )
  if seed is None:
    raise ValueError(
      f"config {config.name!r} rounds stochastically; pass seed= (an int, a "
      "uint32 scalar or a jax.random key)"
    )
  seed = as_seed(seed)
  out_dtype = _out_dtype(lhs, rhs, preferred_element_type)
  if 0 in layout.bmnk:
    return jnp.zeros(layout.out_shape, out_dtype)
  x3 = layout.lhs(lhs)
  w3 = layout.rhs(rhs)  # (B, N, K), or (B, K, N) when layout.rhs_kn
  if block_index is None:
    block_index = choose_block(
      x3, jnp.swapaxes(w3, 1, 2) if layout.rhs_kn else w3, config
    )
  block_index = jnp.asarray(block_index, jnp.int32)
  if config.scale == "lsq":
    if steps is None:
      raise ValueError(
        f"config {config.name!r} learns its LSQ step sizes: pass steps= (a "
        "(2,) float32 array; initial_steps() gives LSQ's initialisation) or "
        "use lowprec_jax.nn.QuantDotGeneral, which keeps them as parameters"
      )
    steps = jnp.asarray(steps)
    if steps.shape != (2,) or not jnp.issubdtype(steps.dtype, jnp.floating):
      raise ValueError(
        f"steps has shape {steps.shape} and dtype {steps.dtype}; expected "
        "a (2,) float array (the steps of x and w)"
      )
    steps = steps.astype(jnp.float32)
  else:
    steps = jnp.ones((2,), jnp.float32)
  plan = _Plan(
    config=config,
    candidates=candidates,
    lhs_dtype=np.dtype(lhs.dtype),
    rhs_dtype=np.dtype(rhs.dtype),
    out_dtype=out_dtype,
    implementation=impl,
    rhs_kn=layout.rhs_kn,
  )
  out3 = _int4_qdot(x3, w3, steps, block_index, seed, plan)
  return layout.out(out3)


def canonical_operands(lhs, rhs, dimension_numbers) -> tuple[Array, Array]:
  """x (B, M, K) and w (B, N, K) of a dot_general (for block search and
  LSQ initialisation outside the op)."""
  layout = canonicalize(lhs, rhs, dimension_numbers)
  w3 = layout.rhs(rhs)
  return layout.lhs(lhs), jnp.swapaxes(w3, 1, 2) if layout.rhs_kn else w3
