"""Per-implementation test bases: one base per op, one subclass per kernel.

The pattern of tokamax's ``test_base.py``: a base class (not named
``Test*``, so pytest collects only its subclasses) holds the tests of an op;
each subclass names one implementation and what it runs as class attributes.
Two decorators read those attributes when pytest collects a subclass:

* ``@cases("argnames", "attr")`` parametrizes a test with the subclass's
  ``attr``: a sequence of values (tuples for several argnames) or a dict of
  id -> value (with ``keys=True``, the dict's keys are the values). An empty
  one means the implementation has no such cases: the test is reported
  once, skipped, naming the attribute.
* ``@requires("attr", reason)`` runs a test only where the subclass's
  ``attr`` is true (a capability such as an interpreter's race detector);
  elsewhere it is skipped with ``reason``.
"""

import functools

import pytest


def cases(argnames: str, attr: str, *, keys: bool = False):
  """Parametrizes a test of a base with the collected subclass's ``attr``."""

  def decorate(test):
    test.implementation_cases = (argnames, attr, keys)
    return test

  return decorate


def requires(attr: str, reason: str):
  """Skips a test of a base unless the subclass's ``attr`` is true."""

  def decorate(test):
    @functools.wraps(test)
    def run(self, *args, **kwargs):
      if not getattr(self, attr):
        pytest.skip(f"{type(self).__name__}: {reason}")
      return test(self, *args, **kwargs)

    return run

  return decorate


class ImplementationTestBase:
  """Base of the per-op test bases (see the module docstring)."""

  def pytest_generate_tests(self, metafunc):
    spec = getattr(metafunc.function, "implementation_cases", None)
    if spec is None:
      return
    argnames, attr, keys = spec
    values = getattr(metafunc.cls, attr)
    ids = None
    if isinstance(values, dict):
      ids = list(values)
      values = ids if keys else list(values.values())
    if not values:
      why = f"{metafunc.cls.__name__}.{attr} is empty: no such cases"
      n, skip = len(argnames.split(",")), pytest.mark.skip(reason=why)
      values, ids = [pytest.param(*(None,) * n, marks=skip)], ["none"]
    metafunc.parametrize(argnames, values, ids=ids)
