"""Integer helpers shared by every kernel file."""


def cdiv(a: int, b: int) -> int:
  """Ceiling division of non-negative ints."""
  return -(-a // b)
