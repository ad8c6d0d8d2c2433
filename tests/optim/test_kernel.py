"""The fused quantized-Adam kernel: interpreted Pallas vs the jnp reference.

Both run the same ``step`` arithmetic; these tests check that blocking,
ragged edge blocks, half-group slicing, 4-bit packing, ref gathers and the
binary-search lookup reproduce the reference bit for bit, and that the
kernel lowers for CUDA (Triton) on a CPU host.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowprec_jax.optim import Codebook, Fp8Dre, scale_by_adam_quantized
from lowprec_jax.optim._codebooks import dynamic_map, linear_nonzero_map, tables
from lowprec_jax.optim._moment_formats import zeros_moment
from pallas_kernels import moment_codecs as mc
from pallas_kernels import quantized_adam as qa
from pallas_kernels.backend import cuda_lowering
from tests.helpers import rng
from tests.optim.helpers import bits

PAIRS = {
  "fp8": (Fp8Dre(), Fp8Dre()),
  "fp8_compact_e5m2": (Fp8Dre(compact=True), Fp8Dre(dtype="e5m2")),
  "fp8_plain": (Fp8Dre(expand=False), Fp8Dre(dtype="e5m2", expand=False)),
  "8bit": (Codebook(group=128), Codebook(signed=False, group=128)),
  "4bit": (
    Codebook(bits=4, group=128),
    Codebook(bits=4, map="linear", signed=False, group=128),
  ),
  "fp32_mu": (None, Fp8Dre()),
}


def _moment(fmt, rows, group):
  if fmt is None:
    return (jnp.zeros((rows, group)), ()), mc.PlainCodec(), ()
  q = zeros_moment((rows, group), fmt)
  stats = tuple(s.reshape(-1) for s in q.stats_tuple())
  return (q.codes.reshape(rows, -1), stats), fmt.codec(), fmt.tables()


# (row, column, value) set in the first step's gradient by ``specials``.
# 1e15 (g^2 finite) is saturated, alone (row 4) and beside an inf (row 0).
SPECIALS = (
  (0, 3, np.inf),
  (1, 5, -np.inf),
  (2, 7, np.nan),
  (3, 9, 1e20),
  (4, 11, 1e15),
  (0, 20, 1e15),
)


def _run(
  impl,
  pair,
  rows,
  group,
  g_dtype,
  nesterov,
  block_rows=16,
  steps=2,
  specials=False,
):
  (mu, mu_codec, mu_t), (nu, nu_codec, nu_t) = (
    _moment(f, rows, group) for f in pair
  )
  kwargs = dict(
    codecs=(mu_codec, nu_codec), tables=(mu_t, nu_t), nesterov=nesterov
  )
  if impl == "pallas":
    fn = functools.partial(
      qa.quantized_adam_update, block_rows=block_rows, interpret=True, **kwargs
    )
  else:
    fn = functools.partial(qa.reference, **kwargs)
  fn = jax.jit(fn)
  out = []
  for t in range(1, steps + 1):
    g = rng("g", rows, group, t).standard_normal((rows, group))
    g = g * np.exp(3 * rng("s", rows).standard_normal((rows, 1)))
    if specials and t == 1:
      for row, col, value in SPECIALS:
        g[row, col] = value
    g = jnp.asarray(g)
    hyper = qa.adam_hyperparams(0.9, 0.999, 1e-8, 0.0, jnp.int32(t))
    u, mu, nu = fn(g.astype(g_dtype), mu, nu, hyper)
    out.append(u)
  return out, mu, nu


@pytest.mark.parametrize(
  "pair, rows, g_dtype, nesterov",
  [
    ("fp8", 37, jnp.float32, False),
    ("fp8_compact_e5m2", 16, jnp.bfloat16, True),
    ("fp8_plain", 21, jnp.float32, True),
    ("8bit", 37, jnp.bfloat16, False),
    ("4bit", 37, jnp.float32, True),
    ("fp32_mu", 5, jnp.float32, False),
  ],
)
def test_kernel_matches_reference_bitwise(pair, rows, g_dtype, nesterov):
  """Updates and new states after 2 steps, with ragged last blocks (e.g. 37
  rows in blocks of 16), bf16 gradients and Nesterov; any difference is a
  kernel bug (indexing, masking, packing or lookup)."""
  want = _run("xla", PAIRS[pair], rows, 128, g_dtype, nesterov)
  got = _run("pallas", PAIRS[pair], rows, 128, g_dtype, nesterov)
  for a, b in zip(bits(got), bits(want)):
    assert np.array_equal(a, b)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_kernel_matches_reference_bitwise_on_non_finite_gradients(pair):
  """inf, -inf, NaN, an overflowing g^2 and huge finite ones in the first
  step's gradient (flagged groups, special codes, dead elements, saturated
  outliers), then an ordinary step:
  the kernel's updates and states are the reference's, bit for bit."""
  want = _run("xla", PAIRS[pair], 21, 128, jnp.float32, False, specials=True)
  got = _run("pallas", PAIRS[pair], 21, 128, jnp.float32, False, specials=True)
  for a, b in zip(bits(got), bits(want)):
    assert np.array_equal(a, b)
  updates = np.asarray(want[0][-1])
  assert np.sum(~np.isfinite(updates)) == 3  # the inf, -inf and NaN elements
  assert updates[3, 9] == 0  # v = +inf: update 0 for good


def test_block_size_and_group_256_do_not_changebits():
  pair = (Codebook(group=256), Codebook(signed=False, group=256))
  want = _run("xla", pair, 10, 256, jnp.float32, False, steps=2)
  for block_rows in (1, 32):
    got = _run("pallas", pair, 10, 256, jnp.float32, False, block_rows, 2)
    for a, b in zip(bits(got), bits(want)):
      assert np.array_equal(a, b)


@pytest.mark.parametrize(
  "values",
  [dynamic_map(8, True), dynamic_map(8, False), dynamic_map(4, True)]
  + [linear_nonzero_map(4)],
  ids=["signed8", "unsigned8", "signed4", "linear4"],
)
def test_binary_search_equals_searchsorted(values):
  """The kernel's lookup counts midpoints below x like ``searchsorted``,
  including at codes, exactly at midpoints (ties go to the lower code),
  at ±0 and outside [-1, 1]."""
  codebook, midpoints = (jnp.asarray(t) for t in tables(values))
  special = [codebook, midpoints[:-1], np.array([0.0, -0.0, 1.5, -1.5])]
  x = np.concatenate([np.asarray(a, np.float32) for a in special])
  fill = rng("x", len(values)).uniform(-1, 1, -x.size % 128)
  x = jnp.asarray(np.concatenate([x, fill]), jnp.float32).reshape(-1, 128)
  bits = len(values).bit_length() - 1
  from jax.experimental import pallas as pl

  def kernel(x_ref, c_ref, m_ref, o_ref):
    o_ref[...] = mc.ref_lookup(c_ref, m_ref, bits).nearest(x_ref[...])

  got = pl.pallas_call(
    kernel,
    out_shape=jax.ShapeDtypeStruct(x.shape, jnp.int32),
    interpret=True,
  )(x, codebook, midpoints)
  want = mc.array_lookup(codebook, midpoints[:-1]).nearest(x)
  assert np.array_equal(np.asarray(got), np.asarray(want))


def test_transform_pallas_equals_xla_on_every_layout():
  """Through ``scale_by_adam_quantized``: aligned and flat leaves."""
  shapes = {"w": (4, 256), "odd": (3, 50)}
  params = {
    k: jnp.asarray(rng("p", k).standard_normal(s), jnp.float32)
    for k, s in shapes.items()
  }
  results = []
  for impl in ("xla", "pallas"):
    tx = scale_by_adam_quantized(
      mu_format=Fp8Dre(), nu_format=Fp8Dre(compact=True), implementation=impl
    )
    state, update = tx.init(params), jax.jit(tx.update)
    for t in range(2):
      grads = {
        k: jnp.asarray(rng("g", k, t).standard_normal(s), jnp.float32)
        for k, s in shapes.items()
      }
      updates, state = update(grads, state)
    results.append((updates, state))
  for a, b in zip(bits(results[0]), bits(results[1])):
    assert np.array_equal(a, b)


@pytest.mark.parametrize("pair", ["fp8", "fp8_compact_e5m2", "8bit", "4bit"])
def test_kernel_lowers_for_cuda(pair):
  """Triton lowering (on a CPU host, for an abstract H200) accepts every op:
  fp8 casts, bitcasts, ref gathers, half-block loads and stores."""
  (mu, mu_codec, mu_t), (nu, nu_codec, nu_t) = (
    _moment(f, 64, 128) for f in PAIRS[pair]
  )
  fn = jax.jit(
    functools.partial(
      qa.quantized_adam_update,
      codecs=(mu_codec, nu_codec),
      tables=(mu_t, nu_t),
      nesterov=True,
      interpret=False,
    )
  )
  g = jnp.zeros((64, 128), jnp.bfloat16)
  hyper = qa.adam_hyperparams(0.9, 0.999, 1e-8, 0.0, jnp.int32(1))
  with warnings.catch_warnings():
    # Lowering through Triton warns that the backend is deprecated (jax 0.11).
    warnings.simplefilter("ignore", DeprecationWarning)
    with cuda_lowering():
      lowered = fn.trace(g, mu, nu, hyper).lower(lowering_platforms=("cuda",))
  assert "lpj_quantized_adam" in lowered.as_text()


def test_kernel_rejects_bad_shapes():
  (mu, codec, _), _ = _moment(Fp8Dre(), 8, 128), None
  hyper = qa.adam_hyperparams(0.9, 0.999, 1e-8, 0.0, jnp.int32(1))
  with pytest.raises(ValueError, match=r"power of two >= 32; got \(8, 96\)"):
    qa.quantized_adam_update(
      jnp.zeros((8, 96)), mu, mu, hyper, codecs=(codec, codec)
    )
  with pytest.raises(ValueError, match=r"do not match g \(4, 128\)"):
    qa.quantized_adam_update(
      jnp.zeros((4, 128)), mu, mu, hyper, codecs=(codec, codec)
    )
  with pytest.raises(ValueError, match="block_rows must be a power of two"):
    qa.quantized_adam_update(
      jnp.zeros((8, 128)), mu, mu, hyper, codecs=(codec, codec), block_rows=3
    )
