"""Helpers shared by every kernel file: sizes, interpret mode, CUDA lowering.

* ``resolve_interpret(interpret)``: ``None`` means "interpret when there is
  no GPU", so the same call runs compiled on the H200 and through the Pallas
  interpreter on a CPU host.
* ``cuda_lowering()``: a context in which ``jax.jit(f).trace(...).lower(
  lowering_platforms=("cuda",))`` lowers GPU kernels on a CPU-only host, by
  declaring an abstract H200 (without it lowering fails with "No supported GPU
  devices found"). Used by the CUDA-lowering test tier and by benchmarks.
"""

import contextlib

import jax
from jax.sharding import AbstractDevice, AbstractMesh

H200_SM_COUNT = 132


def cdiv(a: int, b: int) -> int:
  """Ceiling division of non-negative ints."""
  return -(-a // b)


def on_gpu() -> bool:
  """True when the default backend is a GPU."""
  return jax.default_backend() == "gpu"


def resolve_interpret(interpret: bool | None) -> bool:
  """``interpret``, or (for None) True exactly when no GPU is present."""
  return (not on_gpu()) if interpret is None else bool(interpret)


@contextlib.contextmanager
def cuda_lowering(device_kind: str = "NVIDIA H200"):
  """Lets ``.lower(lowering_platforms=("cuda",))`` run on a CPU-only host."""
  mesh = AbstractMesh(
    (1,),
    ("x",),
    abstract_device=AbstractDevice(
      device_kind=device_kind, num_cores=H200_SM_COUNT, platform="cuda"
    ),
  )
  with jax.sharding.use_abstract_mesh(mesh):
    yield
