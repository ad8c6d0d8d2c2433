"""The few places where the compiled kernel and the GPU interpreter differ.

On jax 0.11.2 the Mosaic GPU interpreter (``plgpu.InterpretGPUParams``) runs
8-bit ``wgmma`` with a transposed (K-major) operand, ``plgpu.load(...,
layout=)`` and ``plgpu.layout_cast`` unchanged, so the shim that 0.10.2 needed
(pallas.md §3.2) is gone and the kernel source is identical in both modes.
What remains is launch plumbing:

* the persistent grid has one CTA per SM on a GPU (or under an abstract GPU
  while lowering for CUDA); the interpreter simulates every CTA on the CPU, so
  it gets two, which still exercises the persistent tile loop;
* ``interpret`` is a bool (or None: interpret without a GPU) or an
  ``InterpretGPUParams`` (e.g. with ``detect_races=True``).
"""

import functools

import jax
import jax.experimental.pallas.mosaic_gpu as plgpu

from pallas_kernels.backend import resolve_interpret

INTERPRET_SMS = 2


def interpret_params(interpret) -> plgpu.InterpretGPUParams | None:
  """The ``interpret=`` argument of ``plgpu.kernel`` (None: compile)."""
  if isinstance(interpret, plgpu.InterpretGPUParams):
    return interpret
  return plgpu.InterpretGPUParams() if resolve_interpret(interpret) else None


def num_sms(interpreted: bool, requested: int | None) -> int:
  """CTAs of a persistent grid: ``requested``, else one per SM."""
  if requested is not None:
    return requested
  if interpreted:
    return INTERPRET_SMS
  mesh_device = jax.sharding.get_abstract_mesh().abstract_device
  if mesh_device is not None:
    return mesh_device.num_cores
  return jax.devices()[0].core_count


def compiler_params() -> plgpu.CompilerParams:
  """Warpgroup semantics: layouts inferred, as jax's Hopper kernels use."""
  return plgpu.CompilerParams(
    lowering_semantics=plgpu.LoweringSemantics.Warpgroup
  )


def lane_params() -> plgpu.CompilerParams:
  """Lane semantics: the layouts the kernel names are the layouts used
  (the elementwise quantize kernels pick strided layouts themselves)."""
  return plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane)


def launch_band(body, plan, outs, scratch, args, *, interpret, name):
  """Runs ``body(*refs, plan=plan)`` over ``plan.launch`` (see
  :func:`band_kernel`) on ``args``; ``outs`` and ``scratch`` are lists."""
  return band_kernel(
    functools.partial(body, plan=plan),
    out_type=tuple(outs),
    scratch_types=tuple(scratch),
    grid=plan.launch,
    interpret=interpret,
    name=name,
  )(*args)


def band_kernel(body, *, out_type, scratch_types, grid, interpret, name):
  """``plgpu.kernel`` for the elementwise band kernels (quantize,
  dequantize): a (batch, row band, column band) grid named ("b", "i", "j"),
  Lane semantics, and the GPU interpreter when ``interpret`` asks for it."""
  return plgpu.kernel(
    body,
    out_type=out_type,
    scratch_types=scratch_types,
    grid=grid,
    grid_names=("b", "i", "j"),
    compiler_params=lane_params(),
    interpret=interpret_params(interpret),
    kernel_name=name,
  )
