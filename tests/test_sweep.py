"""Sweeps: a variant equals its standalone run, one compile per group, failures isolated, chunking exact, statistics."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments import ablation_dropout
from jcnn import data as data_lib
from jcnn import layers, models, sweep
from jcnn import train as train_lib


def tiny_config(epochs=1, **train):
  c = ablation_dropout.get_config()
  with c.unlocked():
    c.data.synthetic_shape = (20, 20, 1)
    c.data.synthetic_size = (96, 40)
  c.data.name = "synthetic"
  c.data.train_limit = 0
  c.train.epochs = epochs
  c.train.batch_size = 16
  c.train.eval_batch_size = 16
  c.train.update(train)
  c.model.features = (8, 8, 8)
  c.model.dense = 16
  return c


def standalone(config, hp):
  """The plain single-model path (train.train_and_evaluate's pieces) for one variant's hyperparameters."""
  c = config.copy_and_resolve_references()
  c.model.dropout_rate, c.model.init_scale, c.model.activation = hp["dropout_rate"], hp["init_scale"], hp["activation"]
  c.optim.learning_rate, c.train.seed = hp["learning_rate"], hp["seed"]
  return c


def run_standalone(c, tmp_path, name):
  return train_lib.train_and_evaluate(c, str(tmp_path / name))


def assert_trees_close(a, b, rtol=2e-4, atol=2e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize("strategy", ["vmap", "map", "unroll"])
def test_variant_equals_standalone_run(tmp_path, strategy):
  config = tiny_config()
  s = ablation_dropout.get_sweep()
  s.seeds = 2
  s.dropout_rate = (0.0, 0.5)
  variants = sweep.variants_of(config, s)
  assert [(v["dropout_rate"], v["seed"]) for v in variants] == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]
  results = sweep.train_variants(config, variants, swept=["dropout_rate"], strategy=strategy)
  for k in (1, 2):   # seed 1 at rate 0; seed 0 at rate 0.5 (dropout keys matter)
    ref = run_standalone(standalone(config, variants[k]), tmp_path, f"{strategy}{k}")
    assert_trees_close(results[k]["params"], ref["state"].params)
    np.testing.assert_allclose(results[k]["final"]["test_accuracy"], ref["history"][-1]["test_accuracy"], atol=1e-6)
    np.testing.assert_allclose(results[k]["final"]["train_loss"], ref["history"][-1]["train_loss"], rtol=1e-4)
  # Different seeds and rates really are different models.
  assert not np.allclose(results[0]["params"]["head"]["kernel"], results[1]["params"]["head"]["kernel"])
  assert not np.allclose(results[0]["params"]["head"]["kernel"], results[2]["params"]["head"]["kernel"])


def test_activation_and_init_scale_and_lr_axes_match_standalone(tmp_path):
  config = tiny_config()
  s = sweep.default_sweep()
  s.seeds = 1
  s.activation = ("tanh", "elu")
  s.init_scale = (0.5,)
  s.learning_rate = (3e-3,)
  variants = sweep.variants_of(config, s)
  results = sweep.train_variants(config, variants, swept=sweep.swept_axes(s))
  for k, v in enumerate(variants):
    ref = run_standalone(standalone(config, v), tmp_path, f"act{k}")
    common = {name: p for name, p in results[k]["params"].items() if not name.startswith("act")}
    assert_trees_close(common, ref["state"].params)


@pytest.mark.parametrize("strategy", ["vmap", "map", "unroll"])
def test_one_compile_per_group(strategy):
  config = tiny_config(epochs=2)
  s = sweep.default_sweep()
  s.seeds = 3
  s.dropout_rate = (0.0, 0.5)
  ds = data_lib.load(config.data)
  fns = sweep.make_group_fns(config, ds, ["dropout_rate"], strategy)
  sweep.train_group(config, sweep.variants_of(config, s), ds, ["dropout_rate"], strategy, fns=fns)
  assert fns.step._cache_size() == 1   # 6 variants x 2 epochs x 6 steps: one compiled train-step program
  assert fns.evaluate._cache_size() == 1


def test_diverging_variant_is_marked_and_others_unchanged():
  config = tiny_config()
  config.optim.name = "sgd"
  s = sweep.default_sweep()
  s.seeds = 1
  s.learning_rate = (0.05, 1e12)
  variants = sweep.variants_of(config, s)
  both = sweep.train_variants(config, variants, swept=["learning_rate"])
  alone = sweep.train_variants(config, variants[:1], swept=["learning_rate"])
  assert [r["failed"] for r in both] == [True, False][::-1]
  assert_trees_close(both[0]["params"], alone[0]["params"], rtol=1e-5, atol=1e-6)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(both[1]["params"]))  # last finite state kept
  rows = sweep.aggregate(both, ["learning_rate"])
  assert rows[1]["failed"] == 1 and np.isnan(rows[1]["test_accuracy_mean"])


def test_chunking_splits_and_gives_the_same_numbers(capsys):
  config = tiny_config()
  s = sweep.default_sweep()
  s.seeds = 3
  variants = sweep.variants_of(config, s)
  whole = sweep.train_variants(config, variants, swept=[])
  chunked = sweep.train_variants(config, variants, swept=[], budget=1)   # 1 byte: one variant per program
  assert capsys.readouterr().out.count("in one program") == 1 + 3
  for a, b in zip(whole, chunked):
    assert_trees_close(a["params"], b["params"])
  assert sweep.chunk_size(16, per_variant=100, budget=450) == 4
  assert sweep.chunk_size(16, per_variant=100, budget=10**9, max_chunk=8) == 8
  assert sweep.chunk_size(3, per_variant=100, budget=10**9) == 3


class BNNet(nn.Module):
  num_classes: int = 10
  dropout_rate: float = 0.0
  init_scale: float = 1.0
  activation: str = "relu"

  @nn.compact
  def __call__(self, x, *, train=False):
    x = layers.Conv(4, (3, 3), init_scale=self.init_scale, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    x = layers.Activation(self.activation, name="act")(x, train=train)
    x = layers.Dropout(self.dropout_rate, name="drop")(layers.global_avg_pool(x), train=train)
    return layers.Dense(self.num_classes, name="head")(x)


def test_each_variant_has_its_own_batchnorm_statistics(monkeypatch, tmp_path):
  monkeypatch.setitem(models.ZOO, "bnnet", BNNet)
  config = tiny_config()
  config.model = type(config.model)({"name": "bnnet", "dropout_rate": 0.0, "init_scale": 1.0, "activation": "relu"})
  s = sweep.default_sweep()
  s.seeds = 2
  s.dropout_rate = (0.0, 0.3)
  variants = sweep.variants_of(config, s)
  ds = data_lib.load(config.data)
  res = sweep.train_group(config, variants, ds, ["dropout_rate"])
  stats = res["state"].batch_stats["bn"]["mean"]          # [V, 4]
  assert stats.shape == (4, 4)
  assert not np.allclose(stats[0], stats[1]) and not np.allclose(stats[0], stats[2])
  ref = run_standalone(standalone(config, variants[3]), tmp_path, "bn")
  np.testing.assert_allclose(stats[3], ref["state"].batch_stats["bn"]["mean"], rtol=2e-4, atol=2e-5)


def test_aggregate_mean_and_std_over_seeds():
  mk = lambda rate, seed, acc: {"hparams": {"dropout_rate": rate, "seed": seed}, "failed": False,
                                "final": {"test_accuracy": acc, "test_loss": 1.0, "train_accuracy": acc,
                                          "train_loss": 1.0}}
  rows = sweep.aggregate([mk(0.0, 0, 0.80), mk(0.0, 1, 0.84), mk(0.5, 0, 0.90), mk(0.5, 1, 0.90)], ["dropout_rate"])
  assert rows[0]["test_accuracy_mean"] == pytest.approx(0.82)
  assert rows[0]["test_accuracy_std"] == pytest.approx(np.std([0.80, 0.84], ddof=1))
  assert rows[1]["test_accuracy_std"] == 0.0 and rows[0]["seeds"] == 2


def test_run_sweep_writes_table_csv_json_and_plots(tmp_path):
  config = tiny_config()
  s = ablation_dropout.get_sweep()
  s.seeds = 2
  s.groups = ("model.dense=8",)
  out = sweep.run_sweep(config, s, str(tmp_path))
  for f in ("summary.md", "summary.csv", "summary.json", "variants.jsonl", "config.json", "curves.png",
            "accuracy_vs_dropout_rate.png", "accuracy_vs_group.png"):
    assert (tmp_path / f).exists(), f
  assert len(out["rows"]) == 3 and "± " in out["table"]
  assert (tmp_path / "variants.jsonl").read_text().count("\n") == 6
