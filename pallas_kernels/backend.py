"""Which backend a call is for: a GPU, or the interpreter on a CPU host.

* ``target_backend()``: ``"gpu"`` on a GPU, inside :func:`cuda_lowering`
  (a CPU host lowering for CUDA) and under a deviceless GPU topology's mesh
  (ahead-of-time compilation for sm_90), else ``jax.default_backend()``. Kernels
  (interpret or compile) and ``implementation=None`` (which implementations
  to try) both decide by it, so a program lowered for CUDA on a CPU host is
  the program a GPU would run.
* ``resolve_interpret(interpret)``: ``None`` means "interpret unless the
  target is a GPU", so the same call runs compiled on the H200 and through
  the Pallas interpreter on a CPU host.
* ``cuda_lowering()``: a context in which ``jax.jit(f).trace(...).lower(
  lowering_platforms=("cuda",))`` lowers GPU kernels on a CPU-only host, by
  declaring an abstract H200 (without it lowering fails with "No supported GPU
  devices found"). Used by the CUDA-lowering tests and by benchmarks.
"""

import contextlib

import jax
from jax.sharding import AbstractDevice, AbstractMesh, AxisType

H200_SM_COUNT = 132


def lowering_for_gpu() -> bool:
  """True under an abstract mesh whose devices are GPUs: inside
  :func:`cuda_lowering` (platform "cuda") or the mesh of a deviceless
  ``jax.experimental.topologies`` GPU target (platform "gpu")."""
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  return getattr(device, "platform", None) in ("cuda", "gpu")


def target_backend() -> str:
  """``"gpu"`` on a GPU or when lowering for CUDA, else the default backend."""
  if lowering_for_gpu():
    return "gpu"
  return jax.default_backend()


def on_gpu() -> bool:
  """True when the program is for a GPU (see :func:`target_backend`)."""
  return target_backend() == "gpu"


def resolve_interpret(interpret: bool | None) -> bool:
  """``interpret``, or (for None) True exactly when the target is no GPU."""
  return (not on_gpu()) if interpret is None else bool(interpret)


@contextlib.contextmanager
def cuda_lowering(device_kind: str = "NVIDIA H200", *, explicit: bool = True):
  """Lets ``.lower(lowering_platforms=("cuda",))`` run on a CPU-only host.

  ``explicit``: the one mesh axis ``"x"`` is Explicit (sharding in types),
  else Auto; a program must lower under both.
  """
  mesh = AbstractMesh(
    (1,),
    ("x",),
    axis_types=(AxisType.Explicit if explicit else AxisType.Auto,),
    abstract_device=AbstractDevice(
      device_kind=device_kind, num_cores=H200_SM_COUNT, platform="cuda"
    ),
  )
  with jax.sharding.use_abstract_mesh(mesh):
    yield
