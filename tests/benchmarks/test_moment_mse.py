"""benchmarks.moment_mse on a tiny synthetic run (a checkpoint, no training)."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _results, moment_mse
from tests.helpers import rng
from train.checkpoint import Checkpoints
from train.loop import TrainConfig, build
from train.model import GPTConfig


def _synthetic_run(run_dir):
  """A one-layer GPT's checkpoint whose AdamW moments are moment-like:
  per-element gradient scales log-normal (sigma 1), m ~ scale N(0, 1),
  v ~ scale^2 (1 + chi^2 noise); count 10."""
  cfg = TrainConfig(model=GPTConfig(seq_len=16, n_layers=1, n_heads=2))
  _, state, _ = build(cfg)

  def fill(path, x):
    key = jax.tree_util.keystr(path, simple=True, separator="/")
    if "/opt_state/1/0/count" in key:
      return jnp.full_like(x, 10)
    if "/opt_state/1/0/mu/" in key or "/opt_state/1/0/nu/" in key:
      gen = rng(key)
      scale = np.exp(gen.normal(0, 1, x.shape))
      if "/mu/" in key:
        return jnp.asarray(scale * gen.standard_normal(x.shape), x.dtype)
      noise = 1 + gen.chisquare(1, x.shape)
      return jnp.asarray(1e-3 * scale**2 * noise, x.dtype)
    return x

  state = jax.tree_util.tree_map_with_path(fill, state)
  (run_dir / "config.json").write_text(json.dumps(cfg.to_json()))
  checkpoints = Checkpoints(run_dir / "checkpoints", every=cfg.ckpt_every)
  checkpoints.save(10, state, force=True)
  checkpoints.close()


def test_moment_mse_on_a_synthetic_run(tmp_path, monkeypatch):
  _synthetic_run(tmp_path)
  monkeypatch.setattr(_results, "RESULTS", tmp_path)
  # Three formats a side keep the test short; the grid code is the same.
  for side, extra in (("FIRST", "4-bit dynamic"), ("SECOND", "8-bit dynamic")):
    formats = getattr(moment_mse, side)
    keep = ("E4M3", "E4M3+Expand", extra)
    monkeypatch.setattr(moment_mse, side, {k: formats[k] for k in keep})
  moment_mse.main(["--run", str(tmp_path)])
  result = json.loads((tmp_path / "moment_mse_step10.json").read_text())
  assert result["count"] == 10
  default, every = (result["tables"][k] for k in moment_mse.LEAVES)
  # Default mask: the 4 block matrices; every matrix adds wte, wpe, head.
  assert default["elements"] == 128 * (128 + 384 + 512 + 512)
  assert every["elements"] == default["elements"] + 128 * (256 + 16 + 256)
  mse = default["mse"]
  assert set(mse) == set(moment_mse.FIRST)
  assert all(set(row) == set(moment_mse.SECOND) for row in mse.values())
  assert all(np.isfinite(v) for row in mse.values() for v in row.values())
  # COAT's ordering on moment-like data: expansion helps both moments.
  assert mse["E4M3+Expand"]["E4M3+Expand"] < mse["E4M3"]["E4M3"]
  assert mse["E4M3+Expand"]["E4M3+Expand"] < mse["E4M3"]["E4M3+Expand"]
  assert result["e4m3_over_e4m3_expand"] > 1
  table = (tmp_path / "moment_mse_step10.md").read_text()
  assert "| E4M3+Expand |" in table and "COAT Table 1" in table
