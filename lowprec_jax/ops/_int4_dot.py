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

Every GEMM is a ``lowprec_gemm`` call tagged for the census, with int8
operands (INT4 codes unpacked inside the call). Only the ``"xla"``
implementation exists so far: the fused Hadamard + quantize + pack and the
unpack-in-kernel GEMM kernels are not written yet, and asking for another
implementation raises.
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
  lsq_quantize,
)
from lowprec_jax.formats._quantize import fake_quantize, quantize
from lowprec_jax.ops._census import GemmTag
from lowprec_jax.ops._dimension_numbers import canonicalize
from lowprec_jax.ops._dot_general import _out_dtype, lowprec_gemm
from lowprec_jax.ops._int4_config import Int4Config
from lowprec_jax.ops._leverage import row_norms, systematic_sample, water_fill
from pallas_kernels import tiles
from pallas_kernels.bit_split import bit_split, combined_codes
from pallas_kernels.checks import as_seed, check_float_array
from pallas_kernels.hadamard import block_hadamard
from pallas_kernels.matmul_reference import scaled_matmul
from pallas_kernels.numerics import (
  NumberGrid,
  derive_seed,
  finite_absmax,
  random_bits,
  reduced_tile_scale,
  uniform_from_bits,
)

IMPLEMENTATIONS = ("xla",)
_SALT_SPLIT, _SALT_DGRAD, _SALT_WGRAD, _SALT_REQUANT = 11, 12, 13, 14
_LSQ_TILE = None  # LSQ scales are per tensor


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GemmOperand:
  """Unpacked integer codes and their scales for one GEMM operand: codes
  (B, R, K) int8, or packed INT4 (uint8, last axis halved) unpacked inside
  the GEMM call; scales shaped by ``tile`` (:mod:`pallas_kernels.tiles`)."""

  codes: Array
  scale: Array
  tile: tiles.Tile = dataclasses.field(metadata=dict(static=True))
  packed: bool = dataclasses.field(default=False, metadata=dict(static=True))

  def unpacked(self) -> "GemmOperand":
    """The same operand with one int8 code per element."""
    if not self.packed:
      return self
    return GemmOperand(Int4().unpack(self.codes), self.scale, self.tile)


@dataclasses.dataclass(frozen=True)
class Int4XlaGemm:
  """The ``"xla"`` INT4 GEMM: int8 dots of the codes (exact int32 partial
  sums per contraction block) and fp32 rescale
  (:func:`pallas_kernels.matmul_reference.scaled_matmul`)."""

  name: str = "xla"

  def matmul(self, a: GemmOperand, b: GemmOperand, out_dtype):
    a, b = a.unpacked(), b.unpacked()
    return scaled_matmul(
      a.codes,
      a.scale,
      b.codes,
      b.scale,
      a_tile=a.tile,
      b_tile=b.tile,
      out_dtype=out_dtype,
    )


@dataclasses.dataclass(frozen=True)
class _Plan:
  config: Int4Config
  candidates: tuple[int, ...]
  lhs_dtype: np.dtype
  rhs_dtype: np.dtype
  out_dtype: np.dtype
  implementation: Int4XlaGemm = Int4XlaGemm()


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


def _quantize_operand(v: Array, step: Array, config: Int4Config):
  """(GEMM operand with packed codes, derivative codes packed or None)."""
  fmt = Int4()
  if config.scale == "lsq":
    q, d = lsq_quantize(v, step)
    scale = jnp.abs(step).astype(jnp.float32).reshape(1, 1, 1)
    return GemmOperand(fmt.pack(q), scale, _LSQ_TILE, True), fmt.pack(d)
  qt = quantize(v, config.format)
  return GemmOperand(qt.qvalue, qt.scale, config.format.tile, True), None


def _gemm(role, plan, formats, a: GemmOperand, b: GemmOperand, out_dtype):
  """One census-tagged GEMM call (``formats``: lhs and rhs names)."""
  bsz, m, k = a.codes.shape
  impl = plan.implementation.name
  tag = GemmTag(
    role=role,
    implementation=impl,
    lhs_format=formats[0],
    rhs_format=formats[1],
    lhs_quantizer=impl,
    rhs_quantizer=impl,
    shape=f"{bsz}x{m}x{b.codes.shape[1]}x{k * (2 if a.packed else 1)}",
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
  cfg = plan.config
  a, a_d = _quantize_operand(_rotate(x3, index, plan.candidates), steps[0], cfg)
  b, b_d = _quantize_operand(_rotate(w3, index, plan.candidates), steps[1], cfg)
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
    op.tile,
    op.packed,
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


def _transposed(op: GemmOperand) -> GemmOperand:
  """The operand of the transposed matrix (unpacked codes)."""
  op = op.unpacked()
  return GemmOperand(
    jnp.swapaxes(op.codes, 1, 2),
    jnp.swapaxes(op.scale, 1, 2),
    tiles.transpose(op.tile),
  )


def _uniforms(seed, salt, shape) -> Array:
  row, col = tiles.element_coordinates(shape)
  return uniform_from_bits(random_bits(derive_seed(seed, salt), row, col))


def _per_tensor(codes: Array, inverse_sigma: Array) -> GemmOperand:
  return GemmOperand(codes, inverse_sigma.reshape(1, 1, 1), None)


def _backward_all(g_formats, plan, hi, lo, inv_sigma, a, b):
  """dv_x, dv_w from one INT8 GEMM each on c = 14 hi + lo."""
  c = combined_codes(hi, lo)  # (B, M, N)
  dv_x = _gemm(
    "dlhs",
    plan,
    g_formats[0],
    _per_tensor(c, inv_sigma),
    _transposed(b),
    jnp.float32,
  )
  dv_w = _gemm(
    "drhs",
    plan,
    g_formats[1],
    _per_tensor(jnp.swapaxes(c, 1, 2), inv_sigma),
    _transposed(a),
    jnp.float32,
  )
  return dv_x, dv_w


def _backward_leverage(g_formats, plan, hi, lo, inv_sigma, a, b, seed):
  """dv_x, dv_w with static-size leverage-score sampling (module doc)."""
  bsz, m, _ = hi.shape
  rows = jnp.concatenate(
    [hi.astype(jnp.float32) * 14.0, lo.astype(jnp.float32)], axis=1
  )  # (B, 2M, N)
  norms = row_norms(rows)
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
  w_t = _transposed(b)
  hi_part = _gemm(
    "dlhs", plan, g_formats[0], _per_tensor(hi, inv_sigma), w_t, jnp.float32
  )
  lo_part = _gemm(
    "dlhs", plan, g_formats[0], _per_tensor(lo, inv_sigma), w_t, jnp.float32
  )
  dv_x = (
    hi_part * (14.0 * factors[:, :m, None]) + lo_part * factors[:, m:, None]
  )

  # wgrad: sample rows of [14 hi; lo] with x's rows duplicated.
  x = a.unpacked()  # per-tensor scale (leverage needs it: Int4Config)
  x_norms = row_norms(x.codes)
  scores = norms * jnp.concatenate([x_norms, x_norms], axis=1)

  def wgrad_rows(score, r, u):
    index, weights = systematic_sample(water_fill(score, m), m, u)
    return r[index] * weights[:, None], index % m

  kept, x_rows = jax.vmap(wgrad_rows)(scores, rows, u_wgrad)  # (B, M, N)
  # 1/p folded into the kept rows, requantized to INT8 by SR (unbiased).
  u_requant = _uniforms(seed, _SALT_REQUANT, kept.shape)
  codes, scale = _sr_int8(kept, u_requant)
  x_kept = jnp.take_along_axis(x.codes, x_rows[:, :, None], axis=1)
  dv_w = _gemm(
    "drhs",
    plan,
    g_formats[1],
    GemmOperand(
      jnp.swapaxes(codes, 1, 2), scale * inv_sigma.reshape(1, 1, 1), None
    ),
    GemmOperand(jnp.swapaxes(x_kept, 1, 2), x.scale, None),
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
  mask, d_step = lsq_derivatives(fmt.unpack(op.codes), fmt.unpack(d))
  scale = lsq_gradient_scale(int(np.prod(dv.shape)))
  return dv * mask, jnp.sum(dv * d_step) * scale


def _int4_qdot_bwd(plan: _Plan, res, g):
  a, a_d, b, b_d, steps, index, seed = res
  cfg = plan.config
  g = g.astype(jnp.float32)
  hi, lo, sigma = bit_split(g, _uniforms(seed, _SALT_SPLIT, g.shape), cfg.split)
  inv_sigma = 1.0 / sigma
  name = cfg.gradient_name
  g_formats = ((name, cfg.operand_name), (name, cfg.operand_name))
  if cfg.sampling == "all":
    dv_x, dv_w = _backward_all(g_formats, plan, hi, lo, inv_sigma, a, b)
  else:
    dv_x, dv_w = _backward_leverage(
      g_formats, plan, hi, lo, inv_sigma, a, b, seed
    )
  d_steps = jnp.zeros_like(steps)
  if cfg.scale == "lsq":
    (dv_x, dstep_x), (dv_w, dstep_w) = (
      _lsq_backward(dv_x, a, a_d),
      (_lsq_backward(dv_w, b, b_d)),
    )
    d_steps = jnp.stack([dstep_x, dstep_w]) * jnp.sign(steps)  # of |step|
  dx = _rotate(dv_x, index, plan.candidates).astype(plan.lhs_dtype)
  dw = _rotate(dv_w, index, plan.candidates).astype(plan.rhs_dtype)
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
  implementation: str | None = None,
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
    implementation: "xla" or None (the only implementation so far).

  Returns:
    An array of shape ``batch + lhs_free + rhs_free``.
  """
  if not isinstance(config, Int4Config):
    raise ValueError(f"config must be an Int4Config, got {config!r}")
  if implementation not in (None, *IMPLEMENTATIONS):
    raise NotImplementedError(
      f"int4_dot_general has no {implementation!r} implementation yet "
      f"(available: {IMPLEMENTATIONS}); the INT4 kernels are not written"
    )
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
  w3 = layout.rhs(rhs)
  if layout.rhs_kn:
    w3 = jnp.swapaxes(w3, 1, 2)  # (B, N, K): the xla implementation's layout
  if block_index is None:
    block_index = choose_block(x3, w3, config)
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
  )
  out3 = _int4_qdot(x3, w3, steps, block_index, seed, plan)
  return layout.out(out3)


def canonical_operands(lhs, rhs, dimension_numbers) -> tuple[Array, Array]:
  """x (B, M, K) and w (B, N, K) of a dot_general (for block search and
  LSQ initialisation outside the op)."""
  layout = canonicalize(lhs, rhs, dimension_numbers)
  w3 = layout.rhs(rhs)
  return layout.lhs(lhs), jnp.swapaxes(w3, 1, 2) if layout.rhs_kn else w3
