"""Fused Adam step on quantized moments: dequantize, Adam in fp32, requantize.

Contract. A tensor is viewed as groups, rows of ``G`` elements: gradients
``g`` of shape ``(R, G)``, and each moment stored by its codec as ``codes``
(``(R, G)``, or ``(R, G / 2)`` for packed 4-bit codes) plus per-group
``stats`` (each ``(R,)``). For every group, in fp32::

    m0, v0 = decode(mu), decode(nu)
    m = (1 - b1) g + b1 m0                  # optax.scale_by_adam, term by term
    v = (1 - b2) g^2 + b2 v0
    v = max(v, F m^2)                       # Adam's own bound (v_floor_factor)
    m_hat = m / (1 - b1^t)                  # nesterov: b1 m / (1 - b1^(t+1))
    v_hat = v / (1 - b2^t)                  #            + (1 - b1) g / (1 - b1^t)
    update = m_hat / (sqrt(v_hat + eps_root) + eps)
    m = 0 where v = +inf and m is finite    # a dead element (see step)
    m, v = tame_outliers(m, v)              # a huge finite v saturates
    mu, nu = encode(m), encode(v)

and the fp32 moments live only inside one block of groups. Groups are
independent, so rows can be blocked freely. ``reference`` runs the same
``step`` on whole arrays in plain jnp (any leading shape); the kernel runs it on
``(block_rows, G)`` tiles. Both split each group into two halves, because a
packed 4-bit byte holds element ``j`` (low nibble) and element ``j + G/2``
(high nibble) of its group, which keeps packing free of interleaving.

The codecs (:mod:`pallas_kernels.moment_codecs`) hold the format math.
Codebooks and their midpoints are kernel inputs; a ``Lookup`` reads them
(``jnp.take``/``searchsorted`` in the reference, ref gathers and a binary
search in the kernel).
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import moment_codecs as mc
from pallas_kernels._common import cdiv
from pallas_kernels.backend import resolve_interpret

HYPER_SIZE = 16  # the hyper-parameter vector, padded to a power of two
(_B1, _1MB1, _B2, _1MB2, _EPS, _EPS_ROOT, _BC1, _BC2, _BC1_NEXT, _V_FLOOR) = (
  range(10)
)
# Kept strictly inside Adam's bound, so that it never binds in exact
# arithmetic (nor, with this margin, in float32).
V_FLOOR_MARGIN = 0.99


# ------------------------------------------------------------- the step ----


def adam_hyperparams(b1, b2, eps, eps_root, count) -> Array:
  """The kernel's fp32 hyper-parameter vector, with optax's own arithmetic.

  ``count`` is the step number after incrementing (t >= 1). ``1 - b1`` and
  the bias corrections ``1 - b^t`` are computed by the same expressions
  ``optax.scale_by_adam`` uses, so the fp32 values agree bit for bit.
  """
  bc = _bias_correction_denominator
  vals = [b1, 1 - b1, b2, 1 - b2, eps, eps_root]
  count_next = jnp.maximum(count, count + 1)  # optax.safe_increment
  vals += [bc(b1, count), bc(b2, count), bc(b1, count_next)]
  vals += [v_floor_factor(b1, b2)]
  vals += [0.0] * (HYPER_SIZE - len(vals))
  return jnp.stack([jnp.asarray(v, jnp.float32) for v in vals])


def v_floor_factor(b1, b2) -> Array:
  r"""``F`` with ``v >= F m^2`` for Adam's exact moments (0 if none exists).

  From zero moments, ``m_t = (1-b1) \sum_i b1^i g_{t-i}`` and ``v_t = (1-b2)
  \sum_i b2^i g_{t-i}^2``; Cauchy-Schwarz with weights ``b2^i`` gives
  ``m_t^2 <= (1-b1)^2 / ((1-b2)(1 - b1^2/b2)) v_t`` when ``b1^2 < b2``, so
  ``F = V_FLOOR_MARGIN (1-b2)(1 - b1^2/b2) / (1-b1)^2``. Quantized moments
  can break the bound (a v rounded to zero beside a kept m, the
  "zero-point problem": ``m / sqrt(v)`` becomes huge); the step restores it.
  """
  b1 = jnp.asarray(b1, jnp.float32)
  b2 = jnp.asarray(b2, jnp.float32)
  ok = (b1 * b1 < b2) & (b1 < 1)
  ratio = jnp.where(ok, b1 * b1 / b2, 0.0)
  one_minus_b1 = jnp.where(ok, 1 - b1, 1.0)
  factor = (1 - b2) * (1 - ratio) / (one_minus_b1 * one_minus_b1)
  return jnp.where(ok, V_FLOOR_MARGIN * factor, 0.0)


@functools.partial(jax.jit, inline=True)
def _bias_correction_denominator(decay, count):
  # As optax.tree.bias_correction computes it (the same bits: XLA raises an
  # f32 base to the count converted to f32), with the conversion explicit.
  decay = jnp.asarray(decay, jnp.float32)
  return 1 - decay ** jnp.asarray(count).astype(jnp.float32)


def step(g, mu, nu, hyper, *, codecs, lookups, nesterov, separate_products):
  """The whole contract on parts (tuples of arrays of one group's halves).

  ``mu`` and ``nu`` are ``(codes, stats)``; ``hyper(i)`` reads entry ``i`` of
  the hyper-parameter vector. Returns ``(update parts, mu, nu)``.

  ``separate_products`` materializes the products of each ``a*b + c*d``
  before adding them. Otherwise the compiler may contract one of them into
  a fused multiply-add, and which one depends on its fusion decisions, so
  the same arithmetic could round differently in the plain-XLA path and
  in the interpreted kernel. (Triton cannot lower the barrier; compiled
  kernels contract freely.)
  """
  (mu_codec, nu_codec), (mu_lookup, nu_lookup) = codecs, lookups
  f32 = lambda parts: tuple(p.astype(jnp.float32) for p in parts)  # noqa: E731
  g = f32(g)
  m0 = f32(mu_codec.decode(*mu, mu_lookup))
  v0 = f32(nu_codec.decode(*nu, nu_lookup))

  def blend(a, x, b, y):  # a*x + b*y, elementwise over parts
    ax, by = [a * xi for xi in x], [b * yi for yi in y]
    if separate_products:
      ax, by = jax.lax.optimization_barrier((ax, by))
    return tuple(p + q for p, q in zip(ax, by))

  b1, one_minus_b1 = hyper(_B1), hyper(_1MB1)
  m = blend(one_minus_b1, g, b1, m0)
  v = blend(hyper(_1MB2), [gi * gi for gi in g], hyper(_B2), v0)
  # Adam's invariant v >= F m^2 (v_floor_factor), which exact moments always
  # satisfy and quantized ones may break.
  v = tuple(jnp.maximum(vi, hyper(_V_FLOOR) * mi * mi) for vi, mi in zip(v, m))
  if nesterov:
    m_hat = blend(
      b1,
      [mi / hyper(_BC1_NEXT) for mi in m],
      one_minus_b1,
      [gi / hyper(_BC1) for gi in g],
    )
  else:
    m_hat = tuple(mi / hyper(_BC1) for mi in m)
  update = tuple(
    mh / (jnp.sqrt(vi / hyper(_BC2) + hyper(_EPS_ROOT)) + hyper(_EPS))
    for mh, vi in zip(m_hat, v)
  )
  # A dead element (v = +inf, m finite: g^2 overflowed) has update m/inf = 0
  # now and forever (b2 > 0 keeps v infinite), whatever m is; its m is
  # stored as 0 so it cannot set its group's scale and flush the others.
  keep = hyper(_B2) > 0
  m = tuple(
    jnp.where(keep & (vi == jnp.inf) & jnp.isfinite(mi), 0.0, mi)
    for mi, vi in zip(m, v)
  )
  # A huge finite outlier would set its group's scale (moment_codecs).
  if not all(isinstance(c, mc.PlainCodec) for c in (mu_codec, nu_codec)):
    m, v = mc.tame_outliers(m, v)
  return update, mu_codec.encode(m, mu_lookup), nu_codec.encode(v, nu_lookup)


def reference(g, mu, nu, hyper, *, codecs, tables=((), ()), nesterov=False):
  """The contract in plain jnp on arrays of any leading shape ``(..., G)``.

  ``mu``/``nu`` are ``(codes, stats)`` with stats shaped like ``g[..., 0]``;
  ``tables`` holds ``(codebook, midpoints)`` per codebook codec, else ``()``.
  Returns ``(update in g.dtype, (codes, stats), (codes, stats))``.
  """
  lookups = tuple(mc.array_lookup(*t) for t in tables)
  parts = mc.split_parts(g.astype(jnp.float32))
  moments = [
    (mc.split_parts(codes, codec), tuple(stats))
    for (codes, stats), codec in zip((mu, nu), codecs)
  ]
  update, *new = step(
    parts,
    *moments,
    lambda i: hyper[i],
    codecs=codecs,
    lookups=lookups,
    nesterov=nesterov,
    separate_products=True,
  )
  update = jnp.concatenate(update, axis=-1).astype(g.dtype)
  return update, *(
    (jnp.concatenate(codes, axis=-1), stats) for codes, stats in new
  )


# ------------------------------------------------------------ the kernel ----


def _load_parts(ref, packed: bool):
  if packed:
    return (ref[...],)
  half = ref.shape[-1] // 2
  return (ref[:, :half], ref[:, half:])


def _store_parts(ref, parts) -> None:
  if len(parts) == 1:
    ref[...] = parts[0]
    return
  half = ref.shape[-1] // 2
  ref[:, :half] = parts[0]
  ref[:, half:] = parts[1]


def _kernel(*refs, codecs, layout, nesterov, interpret):
  """One block of groups. ``layout`` gives each ref group's length."""
  it = iter(refs)
  take = lambda n: [next(it) for _ in range(n)]  # noqa: E731
  (g_ref,), (hyper_ref,) = take(1), take(1)
  moments_in = [(next(it), take(n_stats)) for n_stats, _ in layout]
  tables = [take(n_tables) for _, n_tables in layout]
  (u_ref,) = take(1)
  moments_out = [(next(it), take(n_stats)) for n_stats, _ in layout]

  lookups = tuple(
    mc.ref_lookup(*t, bits=int(math.log2(t[0].shape[0]))) if t else None
    for t in tables
  )
  moments = [
    (_load_parts(c_ref, codec.packed), tuple(r[...] for r in s_refs))
    for (c_ref, s_refs), codec in zip(moments_in, codecs)
  ]
  update, *new = step(
    _load_parts(g_ref, False),
    *moments,
    lambda i: hyper_ref[i],
    codecs=codecs,
    lookups=lookups,
    nesterov=nesterov,
    separate_products=interpret,
  )
  _store_parts(u_ref, tuple(u.astype(u_ref.dtype) for u in update))
  for (codes, stats), (c_ref, s_refs) in zip(new, moments_out):
    _store_parts(c_ref, codes)
    for value, s_ref in zip(stats, s_refs):
      s_ref[...] = value


def quantized_adam_update(
  g,
  mu,
  nu,
  hyper,
  *,
  codecs,
  tables=((), ()),
  nesterov=False,
  block_rows: int = 16,
  interpret: bool | None = None,
):
  """The contract as one ``pallas_call`` over blocks of ``block_rows`` groups.

  Same arguments and results as :func:`reference`, on 2-D ``g`` of shape
  ``(R, G)`` with ``G`` a power of two >= 32 and stats of shape ``(R,)``.
  """
  if g.ndim != 2 or g.shape[1] < 32 or g.shape[1] & (g.shape[1] - 1):
    raise ValueError(
      f"g must be (rows, G) with G a power of two >= 32; got {g.shape}"
    )
  rows, group = g.shape
  if block_rows < 1 or block_rows & (block_rows - 1):
    raise ValueError(f"block_rows must be a power of two, got {block_rows}")
  row_block = lambda width: pl.BlockSpec((block_rows, width), lambda i: (i, 0))  # noqa: E731
  stat_block = pl.BlockSpec((block_rows,), lambda i: (i,))
  whole = lambda x: pl.BlockSpec(x.shape, lambda i: (0,) * x.ndim)  # noqa: E731

  args, in_specs, out_shape, out_specs = [g, hyper], [], [], []
  in_specs += [row_block(group), whole(hyper)]
  out_shape.append(jax.ShapeDtypeStruct(g.shape, g.dtype))
  out_specs.append(row_block(group))
  for (codes, stats), codec in zip((mu, nu), codecs):
    width = group // 2 if codec.packed else group
    if codes.shape != (rows, width) or any(s.shape != (rows,) for s in stats):
      raise ValueError(
        f"moment codes {codes.shape} / stats {[s.shape for s in stats]} do "
        f"not match g {g.shape} (expected ({rows}, {width}) and ({rows},))"
      )
    args += [codes, *stats]
    in_specs += [row_block(width)] + [stat_block] * len(stats)
    out_shape.append(jax.ShapeDtypeStruct(codes.shape, codes.dtype))
    out_shape += [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in stats]
    out_specs += [row_block(width)] + [stat_block] * len(stats)
  for t in tables:
    args += list(t)
    in_specs += [whole(x) for x in t]
  layout = tuple((len(m[1]), len(t)) for m, t in zip((mu, nu), tables))
  interpret = resolve_interpret(interpret)
  kernel = functools.partial(
    _kernel,
    codecs=tuple(codecs),
    layout=layout,
    nesterov=nesterov,
    interpret=interpret,
  )
  out = pl.pallas_call(
    kernel,
    grid=(cdiv(rows, block_rows),),
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    interpret=interpret,
    compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1),
    name="lpj_quantized_adam",
  )(*args)
  update, rest = out[0], out[1:]
  n_mu = 1 + len(mu[1])
  return (
    update,
    (rest[0], tuple(rest[1:n_mu])),
    (rest[n_mu], tuple(rest[n_mu + 1 :])),
  )
