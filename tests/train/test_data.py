"""The byte-level corpus and deterministic batches."""

import numpy as np
import pytest

from train import data


def test_default_corpus_is_the_stdlib_and_splits():
  corpus = data.load_corpus(max_bytes=2**20)
  assert corpus.name == "python-stdlib" and corpus.num_bytes == 2**20
  assert corpus.train.dtype == np.uint8
  assert corpus.val.size == pytest.approx(0.05 * 2**20, abs=1)
  assert b"def " in corpus.train[:100000].tobytes()


def test_data_path_file_and_folder(tmp_path):
  (tmp_path / "a.txt").write_text("hello world " * 1000)
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.md").write_text("more text " * 1000)
  (tmp_path / "blob.bin").write_bytes(b"\0\1\2" * 5000)  # skipped: binary
  folder = data.load_corpus(str(tmp_path))
  assert folder.num_bytes == 12000 + 10000
  single = data.load_corpus(str(tmp_path / "a.txt"))
  assert single.num_bytes == 12000


def test_bad_data_paths(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    data.load_corpus(str(tmp_path / "missing"))
  (tmp_path / "tiny.txt").write_text("too short")
  with pytest.raises(ValueError, match="holds 9 bytes of text"):
    data.load_corpus(str(tmp_path / "tiny.txt"))


def test_batches_are_a_function_of_seed_and_step():
  corpus = data.load_corpus(max_bytes=2**18)
  kw = dict(batch_size=4, seq_len=32)
  a = data.train_batch(corpus, seed=0, step=7, **kw)
  assert a.shape == (4, 33) and a.dtype == np.int32 and a.max() < 256
  np.testing.assert_array_equal(
    a, data.train_batch(corpus, seed=0, step=7, **kw)
  )
  assert not np.array_equal(a, data.train_batch(corpus, seed=0, step=8, **kw))
  assert not np.array_equal(a, data.train_batch(corpus, seed=1, step=7, **kw))
  ev = data.eval_batches(corpus, num_batches=3, **kw)
  assert len(ev) == 3 and ev[0].shape == (4, 33)
  again = data.eval_batches(corpus, num_batches=3, **kw)
  np.testing.assert_array_equal(np.stack(ev), np.stack(again))
