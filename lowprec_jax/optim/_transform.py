"""``scale_by_adam_quantized``: Adam whose moments are stored quantized.

The transform follows ``optax.scale_by_adam`` term by term; only the storage
of ``mu`` and ``nu`` differs. Each leaf is updated by one fused step
(:mod:`pallas_kernels.quantized_adam`): dequantize the stored moments, do the
Adam arithmetic in float32, requantize; the float32 moments of a tensor exist
only inside that step (in registers for ``"pallas"``, as XLA temporaries of
that tensor for ``"xla"``).
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from lowprec_jax import _implementations as impls
from lowprec_jax.optim import _moment_formats as mf
from lowprec_jax.optim import _sharding
from pallas_kernels import backend
from pallas_kernels import moment_codecs as mc
from pallas_kernels import quantized_adam as qa


class ScaleByAdamQuantizedState(NamedTuple):
  """State of :func:`scale_by_adam_quantized`."""

  count: Array  # shape=(), dtype=jnp.int32; steps taken
  mu: optax.Updates  # QuantizedMoment leaves (arrays where mu_format=None)
  nu: optax.Updates  # QuantizedMoment leaves (arrays where nu_format=None)


def _check_format(fmt, name: str, *, need_signed: bool) -> None:
  if fmt is None:
    return
  if not isinstance(fmt, mf.MomentFormat):
    raise ValueError(
      f"{name} must be a MomentFormat (Fp8Dre, Codebook) or None, got {fmt!r}"
    )
  if need_signed and not fmt.signed:
    raise ValueError(
      f"{name}={fmt!r} cannot hold negative values; the first moment needs "
      "a signed format"
    )


def scale_by_adam_quantized(
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  *,
  mu_format: mf.MomentFormat | None,
  nu_format: mf.MomentFormat | None,
  quantize_mask: Any | None = None,
  nesterov: bool = False,
  implementation: impls.ImplementationLike | None = None,
) -> optax.GradientTransformation:
  r"""Rescales updates by Adam, storing the moments of chosen leaves quantized.

  With :math:`g_t` the gradient, :math:`Q_\mu, Q_\nu` the formats' quantizers
  and :math:`D` dequantization, every step of a quantized leaf computes in
  float32

  .. math::
    m_t = (1 - \beta_1) g_t + \beta_1 D(\mu_{t-1}), \quad
    v_t = (1 - \beta_2) g_t^2 + \beta_2 D(\nu_{t-1}) \\
    u_t = \frac{m_t / (1 - \beta_1^t)}
      {\sqrt{v_t / (1 - \beta_2^t) + \bar\varepsilon} + \varepsilon}, \quad
    \mu_t = Q_\mu(m_t), \quad \nu_t = Q_\nu(v_t)

  exactly as ``optax.scale_by_adam`` (same bias correction, ``eps_root``
  and Nesterov variant). Every other leaf (masked out, or both formats
  None) *is* ``optax.scale_by_adam``: its update is computed by optax's own
  code on those leaves, so it matches ``optax.adamw`` bit for bit. The state
  is one :class:`ScaleByAdamQuantizedState` whose ``mu``/``nu`` trees mirror
  the parameters (``optax.tree.get(state, "mu")`` finds them).

  Non-finite values behave per element as in float32 Adam: the formats
  keep ``inf``/``NaN`` elements out of their group's statistics and store
  them exactly (:mod:`pallas_kernels.moment_codecs`), and the first moment
  of an element whose second moment overflowed to ``+inf`` (update 0 for
  good) is stored as 0. Use ``optax.apply_if_finite`` to skip such steps
  instead.

  Args:
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added to the denominator outside the square root.
    eps_root: added to the denominator inside the square root.
    mu_dtype: dtype of the first moment of full-precision leaves (optax's).
    mu_format: storage of the first moment (signed): :class:`Fp8Dre`,
      :class:`Codebook`, or None for the parameter's own dtype.
    nu_format: storage of the second moment, or None.
    quantize_mask: which leaves get quantized moments: a tree of bools
      matching the parameters, a callable ``params -> tree of bools``, or
      None (every leaf).
    nesterov: use Nesterov momentum (``optax.nadam``'s rule).
    implementation: ``"xla"`` (plain jnp), ``"pallas"`` (one fused kernel per
      tensor, interpreted on CPU; needs a quantized format), an
      implementation object, a sequence of them (the first that can run the
      formats is used), or None (``("pallas", "xla")`` for a GPU, else
      ``"xla"``; chosen when the update is traced, so a program lowered for
      CUDA on a CPU host gets the GPU's choice). Both give the same bits on
      CPU (tested); compiled Triton kernels may contract multiply-adds and
      use their own exp2/log2, so on a GPU they agree to rounding, not bit
      for bit. XLA cannot
      partition a Pallas call: with sharded states prefer ``"xla"``, whose
      group-local arithmetic XLA shards without communication.

  Returns:
    An ``optax.GradientTransformation`` with state
    :class:`ScaleByAdamQuantizedState`.
  """
  _check_format(mu_format, "mu_format", need_signed=True)
  _check_format(nu_format, "nu_format", need_signed=False)
  if mu_format is not None and nu_format is not None:
    if mu_format.group != nu_format.group:
      raise ValueError(
        f"mu_format.group={mu_format.group} and nu_format.group="
        f"{nu_format.group} must be equal (both moments share one grouping)"
      )
  formats = (mu_format, nu_format)
  quantizing = any(f is not None for f in formats)
  resolve = functools.partial(
    IMPLEMENTATIONS.resolve,
    implementation,
    formats,
    f"mu_format={mu_format}, nu_format={nu_format}",
  )
  resolve()  # a bad request fails here, not at the first update
  group = (mu_format or nu_format).group if quantizing else None
  full_precision = optax.scale_by_adam(
    b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov
  )

  def init_moment(p, fmt):
    if fmt is None:  # zeros of the parameter's dtype (wrapper kept)
      return jax.tree.map(jnp.zeros_like, p)
    value = _sharding.unwrap(p)
    mf.check_float(value, "every parameter with quantized moments")
    _sharding.check_param_sharding(value, fmt)
    return mf.zeros_moment(value.shape, fmt)

  def init_fn(params):
    # A quantized moment replaces an array wrapper (Flax Variable) rather than
    # sitting inside one, so nnx.Optimizer wraps its codes and stats singly.
    leaves, treedef = jax.tree.flatten(params, is_leaf=_is_param_leaf)
    flags = _leaf_flags(quantize_mask, params, treedef, quantizing)
    mu, nu = [None] * len(leaves), [None] * len(leaves)
    full = [i for i, (p, q) in enumerate(zip(leaves, flags)) if not q]
    for i, (p, q) in enumerate(zip(leaves, flags)):
      if q:
        mu[i], nu[i] = (init_moment(p, f) for f in formats)
    fp_state = full_precision.init([leaves[i] for i in full])
    for i, m, v in zip(full, fp_state.mu, fp_state.nu):
      mu[i], nu[i] = m, v
    return ScaleByAdamQuantizedState(
      jnp.zeros([], jnp.int32), treedef.unflatten(mu), treedef.unflatten(nu)
    )

  def update_leaf(g, mu, nu, hyper, impl):
    layout = mf.GroupLayout(tuple(g.shape), group)
    args, codecs, tables = [], [], []
    for m, fmt in zip((mu, nu), formats):
      if fmt is None:
        args.append((layout.view(m), ()))
        codecs.append(mc.PlainCodec(str(m.dtype)))
        tables.append(())
      else:
        codes = layout.view_codes(m.codes, fmt.code_width)
        args.append((codes, m.stats_tuple()))
        codecs.append(fmt.codec())
        tables.append(fmt.tables())
    u, *new = impl.update(
      layout.view(g), *args, hyper, tuple(codecs), tuple(tables), nesterov
    )
    moments = [
      layout.unview(codes)
      if fmt is None
      else mf.from_codes(codes, stats, fmt, g.shape)
      for (codes, stats), fmt in zip(new, formats)
    ]
    return layout.unview(u), *moments

  def update_fn(updates, state, params=None):
    del params
    count_inc = optax.safe_increment(state.count)
    grads, treedef = jax.tree.flatten(updates, is_leaf=lambda x: x is None)
    mu = treedef.flatten_up_to(state.mu)
    nu = treedef.flatten_up_to(state.nu)
    out = list(grads)
    quantized, full = [], []
    for i, (g, *moments) in enumerate(zip(grads, mu, nu)):
      if g is None:  # no update: the moments stay as they are
        continue
      if any(isinstance(m, mf.QuantizedMoment) for m in moments):
        quantized.append(i)
      else:
        full.append(i)
    if quantized:
      hyper = qa.adam_hyperparams(b1, b2, eps, eps_root, count_inc)
      # Resolved when traced: None picks for the backend the update is for
      # (under pallas_kernels.backend.cuda_lowering, the GPU's choice).
      impl = resolve()
      for i in quantized:
        out[i], mu[i], nu[i] = update_leaf(grads[i], mu[i], nu[i], hyper, impl)
    if full:
      fp_updates, fp_state = full_precision.update(
        [grads[i] for i in full],
        optax.ScaleByAdamState(
          state.count, [mu[i] for i in full], [nu[i] for i in full]
        ),
      )
      for i, u, m, v in zip(full, fp_updates, fp_state.mu, fp_state.nu):
        out[i], mu[i], nu[i] = u, m, v
    return treedef.unflatten(out), ScaleByAdamQuantizedState(
      count_inc, treedef.unflatten(mu), treedef.unflatten(nu)
    )

  return optax.GradientTransformation(init_fn, update_fn)


def _is_param_leaf(x) -> bool:
  return x is None or _sharding.is_array_wrapper(x)


def _leaf_flags(mask, params, treedef, quantizing) -> list[bool]:
  """One bool per parameter leaf: does it get quantized moments? None
  leaves never do."""
  values = treedef.flatten_up_to(params)
  if not quantizing:
    return [False] * len(values)
  if mask is None:
    flags = [True] * len(values)
  else:
    tree = mask(params) if callable(mask) else mask
    try:
      flags = treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
      raise ValueError(
        "quantize_mask must be a tree of bools with the parameters' "
        f"structure, or a callable returning one; got {tree!r}. Under "
        "optax.inject_hyperparams a callable is taken for a schedule and "
        "called with the step count: pass static_args=('quantize_mask',) "
        "to inject_hyperparams"
      ) from e
  out = []
  for flag, value in zip(flags, values):
    flag = _sharding.unwrap(flag)
    if not isinstance(flag, (bool, np.bool_)) and value is not None:
      raise ValueError(
        f"quantize_mask must hold Python bools; got {flag!r} (type "
        f"{type(flag).__name__}). Under optax.inject_hyperparams pass "
        "static_args=('quantize_mask',)"
      )
    out.append(value is not None and bool(flag))
  return out


@dataclasses.dataclass(frozen=True)
class XlaAdam(impls.Implementation):
  """The step in plain jnp (:func:`pallas_kernels.quantized_adam.reference`);
  XLA fuses it and shards its group-local arithmetic without communication."""

  name: str = "xla"

  def unsupported_reason(self, formats) -> str | None:
    del formats
    return None

  def update(self, g, mu, nu, hyper, codecs, tables, nesterov):
    return qa.reference(
      g, mu, nu, hyper, codecs=codecs, tables=tables, nesterov=nesterov
    )


@dataclasses.dataclass(frozen=True)
class PallasAdam(impls.Implementation):
  """One fused kernel per tensor on its 2-D ``(groups, G)`` view (interpreted
  on CPU), with 16 groups per program on a GPU and up to 256 in the CPU
  interpreter; XLA cannot partition it."""

  name: str = "pallas"

  def unsupported_reason(self, formats) -> str | None:
    if all(f is None for f in formats):
      return (
        "needs a quantized mu_format or nu_format; with both None use 'xla' "
        "(it is optax.scale_by_adam)"
      )
    return None

  def update(self, g, mu, nu, hyper, codecs, tables, nesterov):
    flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
    moments = [
      (flat(c), tuple(s.reshape(-1) for s in st)) for c, st in (mu, nu)
    ]
    rows = moments[0][0].shape[0]
    u, *new = qa.quantized_adam_update(
      flat(g),
      *moments,
      hyper,
      codecs=codecs,
      tables=tables,
      nesterov=nesterov,
      block_rows=16
      if backend.on_gpu()
      else min(256, 1 << max(0, rows - 1).bit_length()),
    )
    shaped = [
      (c.reshape(c0.shape), tuple(x.reshape(x0.shape) for x, x0 in zip(st, s0)))
      for (c, st), (c0, s0) in zip(new, (mu, nu))
    ]
    return u.reshape(g.shape), *shaped


IMPLEMENTATIONS = impls.ImplementationRegistry(
  op="scale_by_adam_quantized",
  implementations=(PallasAdam(), XlaAdam()),
  auto={"gpu": ("pallas", "xla")},
  default_auto=("xla",),
)
