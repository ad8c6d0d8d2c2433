"""Named GEMM shapes from real models at 8192 tokens: (name, M, K, N).

M is tokens, K the input features, N the output features of a Linear
``y (M, N) = x (M, K) . w (K, N)``.
"""

TOKENS = 8192

SHAPES = (
  ("gpt2_124m_qkv", TOKENS, 768, 2304),
  ("gpt2_124m_mlp_up", TOKENS, 768, 3072),
  ("gpt2_124m_mlp_down", TOKENS, 3072, 768),
  ("gpt2_350m_mlp_up", TOKENS, 1024, 4096),
  ("llama7b_qkv", TOKENS, 4096, 12288),
  ("llama7b_mlp_up", TOKENS, 4096, 11008),
  ("llama7b_mlp_down", TOKENS, 11008, 4096),
)
