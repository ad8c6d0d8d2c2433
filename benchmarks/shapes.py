"""Named GEMM shapes, tagged by who uses them.

A shape is the GEMM of a Linear ``y (B, M, N) = x (B, M, K) . w (K, N)``: M
rows (tokens), K input and N output features, ``batch`` B (1 for 2-D x).
The kernels see it K-major: ``a (B, M, K) x b (B, N, K) -> (B, M, N)``.

Tags:

* ``bench``: real models at 8192 tokens (GPT-2, LLaMA-7B), timed on the H200
  by ``benchmarks.kernels`` and counted by ``benchmarks.residual_bytes``;
* ``ci``: small aligned and ragged shapes the kernel and op tests run on a
  CPU (interpreted kernels), and the ``--smoke`` benchmark (tag ``smoke``);
* ``gpu``: the shapes those tests take instead when they run compiled on a
  GPU (``benchmarks/gpu_check.sh``).

Ragged means not a multiple of the 32/64/128 tiles in M, N or K, so the
masked and padded paths run.
"""

import dataclasses

TOKENS = 8192


@dataclasses.dataclass(frozen=True)
class Shape:
  """One named GEMM problem (see the module docstring)."""

  name: str
  m: int
  k: int
  n: int
  tags: tuple[str, ...]
  batch: int = 1

  @property
  def bmnk(self) -> tuple[int, int, int, int]:
    """``(B, M, N, K)``, the kernels' order."""
    return (self.batch, self.m, self.n, self.k)


BENCH, CI, GPU = ("bench",), ("ci",), ("gpu",)

SHAPES = (
  Shape("gpt2_124m_qkv", TOKENS, 768, 2304, BENCH),
  Shape("gpt2_124m_mlp_up", TOKENS, 768, 3072, BENCH),
  Shape("gpt2_124m_mlp_down", TOKENS, 3072, 768, BENCH),
  Shape("gpt2_350m_mlp_up", TOKENS, 1024, 4096, BENCH),
  Shape("llama7b_qkv", TOKENS, 4096, 12288, BENCH),
  Shape("llama7b_mlp_up", TOKENS, 4096, 11008, BENCH),
  Shape("llama7b_mlp_down", TOKENS, 11008, 4096, BENCH),
  # Portable (Triton) kernels, interpreted: one or two tiles per axis.
  Shape("tiny_aligned", 64, 128, 64, CI),
  Shape("tiny_ragged", 70, 100, 45, CI, batch=2),
  Shape("tiny_ragged_k", 33, 257, 130, CI),
  Shape("tiny_ragged_k300", 70, 300, 45, CI, batch=2),
  # A 3-D Linear x (2, 37, 160) . w (160, 72): canonical M = 74, ragged
  # against every tile (the op tests of implementation="pallas").
  Shape("linear_3d_ragged", 37, 160, 72, CI, batch=2),
  # Mosaic GPU kernels, interpreted (about 1 s per call at 128 x 128 x 256);
  # the smoke benchmark times the first.
  Shape("small_aligned", 128, 256, 128, (*CI, "smoke")),
  Shape("small_pairs", 256, 128, 256, CI),  # 2 x 2 CTA tiles of 128 x 128
  Shape("small_ragged", 100, 160, 72, CI, batch=2),
  # The same tests compiled on a GPU. K <= 512 keeps every FP8 partial sum
  # of codes in [-5, 5] below 2^14 (the exact FP8 tests); 504 is ragged.
  Shape("gpu_aligned", 2048, 4096, 2048, GPU),
  Shape("gpu_ragged", 1000, 504, 1000, GPU, batch=2),
  Shape("gpu_exact", 1024, 512, 1024, GPU),
  Shape("gpu_linear", 1024, 2048, 1536, GPU),
)


def shapes(tag: str) -> tuple[Shape, ...]:
  """Every shape tagged ``tag``, in table order."""
  found = tuple(s for s in SHAPES if tag in s.tags)
  if not found:
    tags = sorted({t for s in SHAPES for t in s.tags})
    raise ValueError(f"no shape is tagged {tag!r}; tags: {tags}")
  return found


def shape(name: str) -> Shape:
  """The shape called ``name``."""
  for s in SHAPES:
    if s.name == name:
      return s
  raise ValueError(f"no shape {name!r}; names: {[s.name for s in SHAPES]}")
