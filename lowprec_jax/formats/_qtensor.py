"""QTensor: quantized codes plus fp32 scales, as one pytree."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from lowprec_jax.formats._format import QuantFormat
from pallas_kernels.quantize_reference import dequantize_array
from pallas_kernels.tiles import scale_shape


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QTensor:
  """A quantized tensor: ``x ~= qvalue * scale`` (scale broadcast per tile).

  Invariants (checked by :meth:`validate`):

  * ``qvalue`` has ``format.storage_dtype`` and the logical shape (packed
    formats: ``format.stored_shape`` of it, e.g. INT4's last axis halved);
    ragged tails are stored, never dropped or padded away;
  * ``scale`` has ``format.scale_dtype`` (float32 unless the format stores
    bf16 scales), the same rank and shape
    ``ceil(qvalue.shape / tile)`` (all ones for per-tensor);
  * ``format`` and ``dtype`` (what :meth:`dequantize` returns by default) are
    static metadata, so a QTensor passes through ``jit``, ``vmap``,
    ``custom_vjp`` residuals and checkpoints as two arrays.
  """

  qvalue: Array
  scale: Array
  format: QuantFormat = dataclasses.field(metadata=dict(static=True))
  dtype: np.dtype = dataclasses.field(
    default=np.dtype(np.float32), metadata=dict(static=True)
  )

  @property
  def shape(self) -> tuple[int, ...]:
    """The logical shape (one code per element of the quantized tensor)."""
    return self.format.logical_shape(self.qvalue.shape)

  @property
  def codes(self) -> Array:
    """The codes unpacked, one per element (``qvalue`` unless packed)."""
    return self.format.unpack(self.qvalue)

  @property
  def ndim(self) -> int:
    return self.qvalue.ndim

  @property
  def nbytes(self) -> int:
    """Bytes of codes plus scales (what is stored or saved)."""
    return int(self.qvalue.nbytes) + int(self.scale.nbytes)

  @property
  def mT(self) -> "QTensor":
    """The transpose of the last two axes, with no requantization.

    For square blocks and per-tensor scales this is exactly the quantization
    of ``x.mT``; other tiles turn into their transposes (rows <-> columns).
    Packed codes are unpacked, transposed and repacked (the new last axis
    must be even).
    """
    if self.ndim < 2:
      raise ValueError(f"mT needs at least 2 axes, got shape {self.shape}")
    fmt = self.format
    return QTensor(
      fmt.pack(jnp.swapaxes(self.codes, -1, -2)),
      jnp.swapaxes(self.scale, -1, -2),
      self.format.transpose(),
      self.dtype,
    )

  def dequantize(self, dtype=None) -> Array:
    """Returns ``qvalue * scale`` in fp32, cast to ``dtype`` (default: .dtype)."""
    return dequantize_array(
      self.codes,
      self.scale,
      tile=self.format.tile,
      out_dtype=np.dtype(self.dtype if dtype is None else dtype),
    )

  def validate(self) -> "QTensor":
    """Raises ValueError if an invariant is broken; returns self."""
    fmt = self.format
    if not isinstance(fmt, QuantFormat):
      raise ValueError(f"QTensor.format must be a QuantFormat, got {fmt!r}")
    if self.qvalue.dtype != fmt.storage_dtype:
      raise ValueError(
        f"QTensor.qvalue has dtype {self.qvalue.dtype} and shape "
        f"{tuple(self.qvalue.shape)}; format {fmt.name} expects "
        f"{fmt.storage_dtype}"
      )
    expected = scale_shape(self.shape, fmt.tile)
    bad_dtype = self.scale.dtype != fmt.scale_dtype
    if bad_dtype or tuple(self.scale.shape) != expected:
      raise ValueError(
        f"QTensor.scale has shape {tuple(self.scale.shape)} and dtype "
        f"{self.scale.dtype}; for qvalue shape {self.shape} and format "
        f"{fmt.name} expected {fmt.scale_dtype} of shape {expected}"
      )
    return self
