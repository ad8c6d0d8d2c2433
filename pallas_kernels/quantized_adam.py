"""Fused Adam step on quantized moments: dequantize, Adam in fp32, requantize.

Contract. A tensor is viewed as groups, rows of ``G`` elements: gradients
``g`` of shape ``(R, G)``, and each moment stored by its codec as ``codes``
(``(R, G)``, or ``(R, G / 2)`` for packed 4-bit codes) plus per-group
``stats`` (each ``(R,)``). For every group, in fp32::

    m0, v0 = decode(mu), decode(nu)
    m = (1 - b1) g + b1 m0                  # optax.scale_by_adam, term by term
    v = (1 - b2) g^2 + b2 v0
    m_hat = m / (1 - b1^t)                  # nesterov: b1 m / (1 - b1^(t+1))
    v_hat = v / (1 - b2^t)                  #            + (1 - b1) g / (1 - b1^t)
    update = m_hat / (sqrt(v_hat + eps_root) + eps)
    mu, nu = encode(m), encode(v)

and the fp32 moments live only inside one block of groups. Groups are
independent, so rows can be blocked freely. ``reference`` runs the same
``step`` on whole arrays in plain jnp (any leading shape); the kernel runs it on
``(block_rows, G)`` tiles. Both split each group into two halves, because a
packed 4-bit byte holds element ``j`` (low nibble) and element ``j + G/2``
(high nibble) of its group, which keeps packing free of interleaving.

The codecs (``PlainCodec``, ``Fp8DreCodec``, ``CodebookCodec``) hold the
format math; they are static and use only kernel-safe operations (no
``round``/``floor``, no captured arrays). Codebooks and their midpoints are
kernel inputs; a ``Lookup`` reads them (``jnp.take``/``searchsorted`` in the
reference, ref gathers and a binary search in the kernel).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import cdiv, resolve_interpret

# Magnitudes below the smallest normal float32 are treated as zero: XLA and
# Triton may flush denormals, and such moments are irrelevant to an update.
TINY = float(jnp.finfo(jnp.float32).tiny)
# k is kept on a 1/16 grid and below 2**16 (an int32-safe floor).
K_STEPS = 16
K16_MAX = 2**20
HYPER_SIZE = 16  # the hyper-parameter vector, padded to a power of two
_B1, _1MB1, _B2, _1MB2, _EPS, _EPS_ROOT, _BC1, _BC2, _BC1_NEXT = range(9)


# --------------------------------------------------------------- lookups ----


@dataclasses.dataclass(frozen=True)
class Lookup:
  """Reads a sorted codebook: ``value(i)`` and ``nearest(x)`` (an index).

  ``nearest(x)`` is the number of midpoints strictly below ``x``: the index
  of the nearest code, ties to the lower one.
  """

  value: object
  nearest: object


def array_lookup(codebook: Array, midpoints: Array) -> Lookup:
  """Lookup over arrays (the reference): ``take`` and ``searchsorted``."""
  return Lookup(
    value=lambda i: jnp.take(codebook, i),
    nearest=lambda x: jnp.searchsorted(midpoints, x, side="left").astype(
      jnp.int32
    ),
  )


def _ref_lookup(codebook_ref, midpoints_ref, bits: int) -> Lookup:
  """Lookup over kernel refs: gathers and an unrolled binary search."""

  def nearest(x):
    count = jnp.zeros(x.shape, jnp.int32)
    for b in reversed(range(bits)):  # steps 2^(bits-1), ..., 1
      probe = midpoints_ref[count + (2**b - 1)]
      count = jnp.where(probe < x, count + 2**b, count)
    return count

  return Lookup(value=lambda i: codebook_ref[i], nearest=nearest)


# ---------------------------------------------------------------- codecs ----


@dataclasses.dataclass(frozen=True)
class PlainCodec:
  """An unquantized moment stored in ``dtype`` (codes are the values)."""

  dtype: str = "float32"
  packed = False
  stat_dtypes = ()

  def decode(self, codes, stats, lookup):
    del stats, lookup
    return tuple(c.astype(jnp.float32) for c in codes)

  def encode(self, parts, lookup):
    del lookup
    return tuple(p.astype(self.dtype) for p in parts), ()


def _absmax(parts) -> Array:
  return functools.reduce(
    jnp.maximum, [jnp.max(jnp.abs(p), axis=-1) for p in parts]
  )


def _absmin_nonzero(parts) -> Array:
  """Smallest non-zero magnitude per group (+inf for an all-zero group)."""
  mins = [
    jnp.min(jnp.where(p != 0, jnp.abs(p), float("inf")), axis=-1) for p in parts
  ]
  return functools.reduce(jnp.minimum, mins)


def _bf16_bits(x: Array, round_up: bool) -> Array:
  """Non-negative float32 ``x`` rounded to bfloat16, up or down (exact)."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  down = bits & jnp.uint32(0xFFFF0000)
  if round_up:
    inexact = (bits & jnp.uint32(0xFFFF)) != 0
    down = jnp.where(inexact, down + jnp.uint32(0x10000), down)
  out = jax.lax.bitcast_convert_type(down, jnp.float32)
  if round_up:  # never round past the largest finite bfloat16
    out = jnp.minimum(out, float(jnp.finfo(jnp.bfloat16).max))
  return out.astype(jnp.bfloat16)


@dataclasses.dataclass(frozen=True)
class Fp8DreCodec:
  """COAT's FP8 moment with dynamic range expansion, per group.

  With ``M`` = max|x| and ``m`` = min over non-zero |x| of the group::

      R = M / m,  c = sqrt(M) sqrt(m),  L = log2(fmax^2 / 2)
      k = floor(16 L / log2 R) / 16,  clipped to [1/16, 2^16]
      y = sign(x) (|x| / c)^k,  s = (M / c)^k / fmax,  q = fp8(clip(y / s))
      x' = sign(q) c (|q| s)^(1/k)

  so the group spans at most ``fmax^2 / 2`` after expansion and its smallest
  element lands at or above ``2 / fmax`` (E4M3: 0.0045 > 2^-9; E5M2:
  3.5e-5 > 2^-16, the smallest subnormals). Guards: an all-zero group
  (M < 2^-126) gets k = 1, c = 1 and zero codes; a group whose non-zero
  magnitudes are all equal (m = M) gets k = 1, c = M, so y = ±1 and
  q = ±fmax, which decodes to exactly ±M. Without ``expand`` this is plain
  per-group FP8: ``s = M / fmax``, ``q = fp8(x / s)``.

  Stats: faithful ``(s, k, c)`` in float32; compact ``(M, m)`` in bfloat16,
  M rounded up and m down (so every element stays inside the stored range)
  and k, c, s recomputed from the stored values on both encode and decode.
  """

  dtype: str = "float8_e4m3fn"
  expand: bool = True
  compact: bool = False
  packed = False

  @property
  def stat_dtypes(self) -> tuple[str, ...]:
    if self.compact:
      return ("bfloat16",) * (2 if self.expand else 1)
    return ("float32",) * (3 if self.expand else 1)

  @property
  def fmax(self) -> float:
    return float(jnp.finfo(self.dtype).max)

  def _params(self, amax, amin):
    """(s, k, c) from the group's max and non-zero min magnitudes."""
    zero = amax < TINY
    hi = jnp.where(zero, 1.0, amax)
    if not self.expand:
      return hi / self.fmax, None, None
    flat = zero | (amin >= amax)
    lo = jnp.where(flat, hi, jnp.maximum(amin, TINY))
    log_ratio = jnp.where(flat, 1.0, jnp.log2(hi) - jnp.log2(lo))
    target = K_STEPS * math.log2(self.fmax**2 / 2)
    k16 = jnp.clip(target / log_ratio, 1.0, K16_MAX).astype(jnp.int32)
    k = jnp.where(flat, 1.0, k16.astype(jnp.float32) / K_STEPS)
    c = jnp.sqrt(hi) * jnp.sqrt(lo)
    s = jnp.exp2(k * jnp.log2(hi / c)) / self.fmax
    return s, k, c

  def _stats_params(self, stats):
    if not self.compact:
      return (stats[0], *((stats[1], stats[2]) if self.expand else (None,) * 2))
    amax = stats[0].astype(jnp.float32)
    amin = stats[1].astype(jnp.float32) if self.expand else None
    return self._params(amax, amin)

  def encode(self, parts, lookup):
    del lookup
    amax = _absmax(parts)
    amin = jnp.minimum(_absmin_nonzero(parts), amax) if self.expand else None
    if self.compact:
      stats = (_bf16_bits(amax, round_up=True),)
      if self.expand:
        stats += (_bf16_bits(amin, round_up=False),)
      s, k, c = self._stats_params(stats)
    else:
      s, k, c = self._params(amax, amin)
      stats = (s, k, c) if self.expand else (s,)
    codes = tuple(self._quantize(p, s, k, c) for p in parts)
    return codes, stats

  def _quantize(self, x, s, k, c):
    if self.expand:
      a = jnp.abs(x)
      t = a / c[..., None]
      y = jnp.exp2(k[..., None] * jnp.log2(jnp.where(a > 0, t, 1.0)))
      x = jnp.where(a > 0, jnp.where(x < 0, -y, y), 0.0)
    y = jnp.clip(x / s[..., None], -self.fmax, self.fmax)
    return y.astype(self.dtype)

  def decode(self, codes, stats, lookup):
    del lookup
    s, k, c = self._stats_params(stats)
    out = []
    for q in codes:
      t = q.astype(jnp.float32) * s[..., None]
      if self.expand:
        a = jnp.abs(t)
        root = jnp.exp2(jnp.log2(jnp.where(a > 0, a, 1.0)) / k[..., None])
        mag = jnp.where(a > 0, c[..., None] * root, 0.0)
        t = jnp.where(t < 0, -mag, mag)
      out.append(t)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class CodebookCodec:
  """Blockwise absmax scaling onto a sorted codebook of ``2**bits`` codes.

  ``A`` = max|x| of the group, ``i = nearest(x / A)`` (uint8 index into the
  sorted codebook), ``x' = codebook[i] A``. An all-zero group keeps A = 0 and
  divides by 1. 4-bit indices are packed two per byte (halves of a group).
  """

  bits: int = 8
  stat_dtypes = ("float32",)

  @property
  def packed(self) -> bool:
    return self.bits == 4

  def encode(self, parts, lookup):
    absmax = _absmax(parts)
    safe = jnp.where(absmax > 0, absmax, 1.0)[..., None]
    idx = [lookup.nearest(p / safe) for p in parts]
    if self.packed:
      return ((idx[0] | (idx[1] << 4)).astype(jnp.uint8),), (absmax,)
    return tuple(i.astype(jnp.uint8) for i in idx), (absmax,)

  def decode(self, codes, stats, lookup):
    if self.packed:
      byte = codes[0].astype(jnp.int32)
      idx = (byte & 15, byte >> 4)
    else:
      idx = tuple(c.astype(jnp.int32) for c in codes)
    return tuple(lookup.value(i) * stats[0][..., None] for i in idx)


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
  vals += [0.0] * (HYPER_SIZE - len(vals))
  return jnp.stack([jnp.asarray(v, jnp.float32) for v in vals])


@functools.partial(jax.jit, inline=True)
def _bias_correction_denominator(decay, count):
  return 1 - decay**count  # as optax.tree.bias_correction computes it


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
  m0 = mu_codec.decode(*mu, mu_lookup)
  v0 = nu_codec.decode(*nu, nu_lookup)

  def blend(a, x, b, y):  # a*x + b*y, elementwise over parts
    ax, by = [a * xi for xi in x], [b * yi for yi in y]
    if separate_products:
      ax, by = jax.lax.optimization_barrier((ax, by))
    return tuple(p + q for p, q in zip(ax, by))

  b1, one_minus_b1 = hyper(_B1), hyper(_1MB1)
  m = blend(one_minus_b1, g, b1, m0)
  v = blend(hyper(_1MB2), [gi * gi for gi in g], hyper(_B2), v0)
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
  return update, mu_codec.encode(m, mu_lookup), nu_codec.encode(v, nu_lookup)


def split_parts(x: Array, codec=None) -> tuple[Array, ...]:
  """Values or unpacked codes as two halves of each group; packed codes whole."""
  if codec is not None and codec.packed:
    return (x,)
  half = x.shape[-1] // 2
  return (x[..., :half], x[..., half:])


def reference(g, mu, nu, hyper, *, codecs, tables=((), ()), nesterov=False):
  """The contract in plain jnp on arrays of any leading shape ``(..., G)``.

  ``mu``/``nu`` are ``(codes, stats)`` with stats shaped like ``g[..., 0]``;
  ``tables`` holds ``(codebook, midpoints)`` per codebook codec, else ``()``.
  Returns ``(update in g.dtype, (codes, stats), (codes, stats))``.
  """
  lookups = tuple(array_lookup(*t) if t else None for t in tables)
  parts = split_parts(g.astype(jnp.float32))
  moments = [
    (split_parts(codes, codec), tuple(stats))
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
    _ref_lookup(*t, bits=int(math.log2(t[0].shape[0]))) if t else None
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
