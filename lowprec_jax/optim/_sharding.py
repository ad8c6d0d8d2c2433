"""Shardings of quantized optimizer states, derived from the parameters'.

Rule (groups never straddle a shard):

* aligned layout (last axis a multiple of the group): codes and stats take the
  parameter's own ``PartitionSpec``. If the last axis is sharded, each shard's
  extent along it must be a multiple of the group.
* flat layout (any other shape): the parameter may be sharded only along its
  first axis, and each shard must hold a whole number of groups
  (``size / shards`` a multiple of the group, so no padding is needed); codes
  ``(groups, G)`` and stats ``(groups,)`` are then sharded along their first
  axis over the same mesh axes.

Anything else raises ``ValueError``. Because every group lies in one shard,
the update of a sharded state needs no communication.
"""

import math

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from lowprec_jax.optim import _moment_formats as mf


def _padded(spec: PartitionSpec, ndim: int) -> tuple:
  entries = tuple(spec)
  return entries + (None,) * (ndim - len(entries))


def _num_shards(entry, mesh_shape) -> int:
  if entry is None:
    return 1
  names = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(mesh_shape[n] for n in names)


def moment_specs(
  shape, fmt: mf.MomentFormat, spec: PartitionSpec, mesh_shape=None
):
  """``(codes_spec, stats_spec)`` for a parameter of ``shape`` and ``spec``.

  ``mesh_shape`` (axis name -> size) enables the divisibility checks.
  """
  shape = tuple(shape)
  layout = mf.GroupLayout(shape, fmt.group)
  entries = _padded(spec, len(shape))
  where = f"parameter of shape {shape} with {spec}"
  if layout.aligned:
    if mesh_shape is not None and entries:
      shards = _num_shards(entries[-1], mesh_shape)
      if shape[-1] % (shards * fmt.group):
        raise ValueError(
          f"group={fmt.group} does not divide the per-shard extent "
          f"{shape[-1]}/{shards} of the last axis of a {where}: groups "
          "would straddle shards"
        )
    return spec, spec
  if any(e is not None for e in entries[1:]):
    raise ValueError(
      f"a {where} has a last axis that is not a multiple of group="
      f"{fmt.group}, so its groups run over the flattened tensor; it may be "
      "sharded only along its first axis"
    )
  first = entries[0] if entries else None
  if mesh_shape is not None and first is not None:
    shards = _num_shards(first, mesh_shape)
    if layout.size % (shards * fmt.group):
      raise ValueError(
        f"group={fmt.group} does not divide the per-shard length "
        f"{layout.size}/{shards} of the flattened {where}: groups would "
        "straddle shards"
      )
  return PartitionSpec(first, None), PartitionSpec(first)


def check_param_sharding(p, fmt: mf.MomentFormat) -> None:
  """Raises if a concrete, NamedSharding-sharded ``p`` breaks the rule."""
  if isinstance(p, jax.core.Tracer) or not isinstance(p, jax.Array):
    return
  sharding = p.sharding
  if isinstance(sharding, NamedSharding):
    moment_specs(p.shape, fmt, sharding.spec, dict(sharding.mesh.shape))


def is_array_wrapper(x) -> bool:
  """A pytree node standing for one value (JAX's ``__jax_array__``), such as
  the ``nnx.Variable``s of ``nnx.Optimizer`` and ``nnx.get_partition_spec``."""
  return hasattr(x, "__jax_array__") and not jax.tree_util.all_leaves([x])


def unwrap(x):
  """The value inside an array wrapper (:func:`is_array_wrapper`), else x."""
  if not is_array_wrapper(x):
    return x
  (value,), _ = jax.tree_util.flatten_one_level(x)
  return value


def _is_state_leaf(x) -> bool:
  return x is None or isinstance(x, (mf.QuantizedMoment, optax.MaskedNode))


def state_partition_specs(tx, params, param_specs, mesh=None):
  """Partition specs of ``tx.init(params)``, from the parameters' specs.

  Works for any optax transformation built from ours and optax's (chains,
  ``partition``, ``inject_hyperparams``): parameter-shaped parts of the state
  follow the parameters (quantized moments by the rule in the module
  docstring), everything else (counts, hyper-parameters) is replicated.
  With ``mesh``, checks that groups never straddle a shard.

  Args:
    tx: the optimizer (anything with ``init``).
    params: parameters or ``jax.ShapeDtypeStruct``s (nothing is allocated).
    param_specs: a tree of ``PartitionSpec`` matching ``params``.
    mesh: optional ``jax.sharding.Mesh`` (or ``AbstractMesh``).

  Returns:
    A tree of ``PartitionSpec`` with the structure of ``tx.init(params)``.
  """
  mesh_shape = None if mesh is None else dict(mesh.shape)
  state = jax.eval_shape(tx.init, params)

  def leaf_specs(leaf, spec):
    spec = unwrap(spec)  # nnx.get_partition_spec gives Variables
    if isinstance(leaf, mf.QuantizedMoment):
      codes, stats = moment_specs(leaf.shape, leaf.format, spec, mesh_shape)
      return mf.QuantizedMoment(
        codes=codes,
        stats={name: stats for name in leaf.stats},
        format=leaf.format,
        shape=leaf.shape,
      )
    return leaf if _is_state_leaf(leaf) else spec

  return optax.tree_map_params(
    tx,
    leaf_specs,
    state,
    param_specs,
    transform_non_params=lambda _: PartitionSpec(),
    is_leaf=_is_state_leaf,
  )


def state_shardings(tx, params, param_shardings):
  """``NamedSharding``s of ``tx.init(params)`` from the parameters' ones.

  All parameter shardings must share one mesh. Use as
  ``jax.jit(tx.init, out_shardings=state_shardings(tx, params, shardings))``.
  """
  leaves = jax.tree.leaves(param_shardings)
  meshes = {s.mesh for s in leaves}
  if len(meshes) != 1:
    raise ValueError(
      f"param_shardings must be NamedShardings on one mesh; got {len(meshes)}"
    )
  (mesh,) = meshes
  specs = jax.tree.map(lambda s: s.spec, param_shardings)
  state_specs = state_partition_specs(tx, params, specs, mesh)
  return jax.tree.map(
    lambda s: NamedSharding(mesh, s),
    state_specs,
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def state_bytes(state) -> int:
  """Exact bytes of every array in an optimizer state (or any pytree)."""
  return sum(
    math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state)
  )
