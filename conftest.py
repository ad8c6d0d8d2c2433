"""Repository-wide pytest hooks (the doctests of ``lowprec_jax`` included).

``tests/conftest.py`` makes numpy-style dtype promotion strict for the whole
session. optax's own Adam (the full-precision partition of our aliases,
``optax.adamw``) and its schedules mix int32 step counts with floats
(``optax/tree_utils/_tree_math.py``), which strict promotion rejects: tests
that run them say so with ``@pytest.mark.standard_promotion`` (as do the
aliases' doctests, marked here) and run with standard promotion.
"""

import jax
import pytest

_OPTAX_DOCTESTS = ("lowprec_jax.optim._alias.",)


def pytest_collection_modifyitems(items):
  for item in items:
    if item.name.startswith(_OPTAX_DOCTESTS):
      item.add_marker(pytest.mark.standard_promotion)


@pytest.fixture(autouse=True)
def _dtype_promotion(request):
  if request.node.get_closest_marker("standard_promotion") is None:
    yield
    return
  with jax.numpy_dtype_promotion("standard"):
    yield
