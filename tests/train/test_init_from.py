"""--init-from: a run starts from another run's trained parameters."""

import jax
import numpy as np
import pytest
from flax import nnx

from train.checkpoint import Checkpoints
from train.cli import main
from train.init_from import check_init_from, load_params
from train.loop import TrainConfig, build, read_metrics, run
from train.model import GPTConfig

pytestmark = pytest.mark.standard_promotion  # optax

TINY = GPTConfig(seq_len=32, d_model=32, n_layers=1, n_heads=2)
SETTINGS = dict(
  model=TINY, steps=4, batch_size=4, lr=1e-2, warmup=1, eval_every=2,
  eval_batches=2, ckpt_every=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  run_dir = tmp_path_factory.mktemp("pretrain") / "bf16"
  with jax.numpy_dtype_promotion("standard"):  # built before the marker's
    run(TrainConfig(**SETTINGS), run_dir, provenance={}, progress=False)
  return run_dir


def _params(state):
  return {
    p: v.get_value()
    for p, v in nnx.to_flat_state(state)
    if p[0] == 0 and isinstance(v, nnx.Param)
  }


def test_parameters_come_from_the_source_run(pretrained):
  source_cfg = TrainConfig(**SETTINGS)
  cfg = TrainConfig(
    **{**SETTINGS, "recipe": "int4_hq"}, init_from=str(pretrained)
  )
  _, fresh, _ = build(cfg)
  loaded = load_params(
    str(pretrained), fresh, lambda saved: build(TrainConfig.from_json(saved))[1]
  )
  ckpt = Checkpoints(pretrained / "checkpoints", every=1)
  source = ckpt.restore(ckpt.latest_step(), build(source_cfg)[1])
  ckpt.close()
  got, want, new = _params(loaded), _params(source), _params(fresh)
  shared = [p for p in got if p in want]
  assert len(shared) == len(want)
  for p in shared:
    np.testing.assert_array_equal(got[p], want[p])
  # The INT4 layers' LSQ steps are new parameters: they keep their init.
  extra = [p for p in got if p not in want]
  assert extra and all(p[-1] == "lsq_step" for p in extra)
  for p in extra:
    np.testing.assert_array_equal(got[p], new[p])


def test_fine_tuning_run_starts_from_the_trained_loss(pretrained, tmp_path):
  last = read_metrics(pretrained)[-1]["loss"]
  cfg = TrainConfig(**SETTINGS, init_from=str(pretrained))
  run(cfg, tmp_path / "ft", provenance={}, progress=False)
  first = read_metrics(tmp_path / "ft")[0]["loss"]
  scratch = read_metrics(pretrained)[0]["loss"]
  # On the batch the source saw at its step 1, the loss starts where the
  # source's training took it, not at the from-scratch value.
  assert last < scratch
  assert first < scratch - 0.5 * (scratch - last)


def test_bad_init_from_is_one_clear_error(pretrained, tmp_path, capsys):
  with pytest.raises(ValueError, match="not a run directory"):
    check_init_from(str(tmp_path), {})
  with pytest.raises(ValueError, match="trained model"):
    check_init_from(str(pretrained), {**TrainConfig().to_json()["model"]})
  with pytest.raises(SystemExit) as e:
    main(["--init-from", str(tmp_path), "--out", str(tmp_path / "x")])
  assert e.value.code == 2
  assert "is not a run directory" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()  # nothing written
