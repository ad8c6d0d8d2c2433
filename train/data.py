"""Byte-level text data: the embedded default corpus or any file or folder.

The default corpus is the Python standard library's own ``.py`` sources,
which exist on every machine with Python and need no download. Text is
tokenized at byte level (vocabulary 256). The last ``val_fraction`` of the
byte stream is held out for evaluation.

Batches are a pure function of ``(seed, step)``: a resumed run reads exactly
the batches an uninterrupted run would have read.
"""

import dataclasses
import pathlib
import sysconfig

import numpy as np

VOCAB_SIZE = 256
# Enough text for thousands of steps of a small model; reading the whole
# stdlib (~40 MB) would only cost start-up time.
DEFAULT_MAX_BYTES = 8 * 2**20


def _text_files(root: pathlib.Path, suffixes) -> list[pathlib.Path]:
  if root.is_file():
    return [root]
  files = [
    p
    for p in sorted(root.rglob("*"))
    if p.is_file() and (suffixes is None or p.suffix in suffixes)
  ]
  return [p for p in files if "__pycache__" not in p.parts]


def _read(files, max_bytes: int, *, explicit: bool) -> bytes:
  """The files' bytes, up to ``max_bytes``; binary files (a NUL byte in the
  first 4 KiB) are skipped in a folder and refused when named (``explicit``)."""
  chunks, total = [], 0
  for path in files:
    data = path.read_bytes()
    if b"\0" in data[:4096]:
      if explicit:
        raise ValueError(f"--data {str(path)!r} is a binary file, not text")
      continue
    chunks.append(data)
    total += len(data)
    if total >= max_bytes:
      break
  return b"".join(chunks)[:max_bytes]


def stdlib_path() -> pathlib.Path:
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A byte stream split into training and validation tokens."""

  name: str
  train: np.ndarray
  val: np.ndarray

  @property
  def num_bytes(self) -> int:
    return int(self.train.size + self.val.size)


def load_corpus(
  path: str | None = None,
  *,
  max_bytes: int = DEFAULT_MAX_BYTES,
  val_fraction: float = 0.05,
  min_tokens: int = 4096,
) -> Corpus:
  """Loads ``path`` (a text file or a folder of them) or the default corpus.

  Raises:
    ValueError: if the path does not exist or holds too little text.
  """
  if path is None:
    root, suffixes, name = stdlib_path(), {".py"}, "python-stdlib"
  else:
    root, suffixes, name = pathlib.Path(path), None, str(path)
    if not root.exists():
      raise ValueError(f"--data {path!r} does not exist")
  data = _read(
    _text_files(root, suffixes),
    max_bytes,
    explicit=path is not None and root.is_file(),
  )
  if len(data) < min_tokens:
    raise ValueError(
      f"--data {name!r} holds {len(data)} bytes of text; need at least "
      f"{min_tokens}"
    )
  tokens = np.frombuffer(data, dtype=np.uint8)
  split = int(len(tokens) * (1 - val_fraction))
  return Corpus(name, tokens[:split], tokens[split:])


def check_windows(corpus: Corpus, seq_len: int) -> None:
  """ValueError unless both splits hold a window of ``seq_len + 1`` tokens
  (what :func:`train_batch` and :func:`eval_batches` draw)."""
  for split, tokens in (("training", corpus.train), ("validation", corpus.val)):
    if tokens.size <= seq_len + 1:
      raise ValueError(
        f"--data {corpus.name!r}: its {split} split has {tokens.size} tokens, "
        f"fewer than one window of --seq-len {seq_len} + 1"
      )


def train_batch(
  corpus: Corpus, *, seed: int, step: int, batch_size: int, seq_len: int
) -> np.ndarray:
  """(batch_size, seq_len + 1) int32 windows drawn with rng(seed, step)."""
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, corpus.train.size - seq_len - 1, size=batch_size)
  return np.stack([corpus.train[s : s + seq_len + 1] for s in starts]).astype(
    np.int32
  )


def eval_batches(
  corpus: Corpus, *, num_batches: int, batch_size: int, seq_len: int
) -> list[np.ndarray]:
  """Fixed, evenly spaced validation windows (the same for every run)."""
  check_windows(corpus, seq_len)
  count = num_batches * batch_size
  span = corpus.val.size - seq_len - 1
  starts = np.linspace(0, span, count).astype(np.int64)
  windows = np.stack([corpus.val[s : s + seq_len + 1] for s in starts])
  windows = windows.astype(np.int32)
  return [
    windows[i * batch_size : (i + 1) * batch_size] for i in range(num_batches)
  ]
