"""Sweeps: a variant equals a plain reference run, one compile per group, failures isolated, chunking exact, statistics.

The reference (`reference_run`) is a plain Python loop over the library's pure pieces (init_state, make_train_step,
epoch_batches, augment, evaluate) that writes out the key contract by hand; it shares no code with jcnn/train/loop.py or the
sweep's lifting.
"""
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments import ablation_dropout
from jcnn import data as data_lib
from jcnn import models, sweep
from jcnn import train as train_lib
from jcnn.errors import ConfigError
from jcnn.experiment import run_sweep, train_and_evaluate
from jcnn.nn import layers
from jcnn.train import loop


def tiny_config(epochs=1, **train):
  c = ablation_dropout.get_config()
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


_REFERENCE = {}


def reference_run(config, hp):
  """One variant trained by a plain loop: keys split(key(seed), 3) = init, data, dropout; epoch e's order
  permutation(fold_in(k_data, e)); step s's dropout key fold_in(k_dropout, s), augmentation key fold_in(k_dropout, -1-s).
  Cached per (config, hp): several tests compare against the same runs."""
  key = (config.to_json(), json.dumps(hp, sort_keys=True))
  if key in _REFERENCE:
    return _REFERENCE[key]
  c = config.copy_and_resolve_references()
  c.model.dropout_rate, c.model.init_scale, c.model.activation = hp["dropout_rate"], hp["init_scale"], hp["activation"]
  c.optim.learning_rate, c.optim.weight_decay, c.train.l2 = hp["learning_rate"], hp["weight_decay"], hp["l2"]
  ds = data_lib.load(c.data, seed=c.train.seed)
  model = models.get(c.model, num_classes=ds.num_classes)
  n, B = len(ds.train_y), c.train.batch_size
  tx = train_lib.make_optimizer(c.optim, (n // B) * c.train.epochs)
  k_init, k_data, k_drop = jax.random.split(jax.random.key(hp["seed"]), 3)
  state = train_lib.init_state(model, tx, k_init, ds.train_x[:1])
  step = jax.jit(train_lib.make_train_step(model, tx, c.train.loss, c.train.l2, c.train.micro_batch))
  for epoch in range(1, c.train.epochs + 1):
    loss_sum = count = 0.0
    order = jax.random.permutation(jax.random.fold_in(k_data, epoch), n)[:(n // B) * B].reshape(-1, B)
    for idx in order:
      x = data_lib.augment(jax.random.fold_in(k_drop, -1 - state.step), ds.train_x[idx], c.data.augment)
      state, m = step(state, x, ds.train_y[idx], k_drop)
      loss_sum, count = loss_sum + float(m["loss_sum"]), count + float(m["count"])
  test = train_lib.evaluate(model, state, ds.test_x, ds.test_y, c.train.eval_batch_size)
  _REFERENCE[key] = (state, {"train_loss": loss_sum / count, "test_accuracy": test["accuracy"]})
  return _REFERENCE[key]


def assert_trees_close(a, b, rtol=2e-4, atol=2e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize("strategy", ["vmap", "map", "unroll"])
def test_variant_equals_reference_run(strategy):
  config = tiny_config()
  s = ablation_dropout.get_sweep()
  s.seeds = 2
  s.dropout_rate = (0.0, 0.5)
  variants = sweep.variants_of(config, s)
  assert [(v["dropout_rate"], v["seed"]) for v in variants] == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]
  results = sweep.train_variants(config, variants, swept=["dropout_rate"], strategy=strategy)
  for k in (1, 2):   # seed 1 at rate 0; seed 0 at rate 0.5 (dropout keys matter)
    state, ref = reference_run(config, variants[k])
    assert_trees_close(results[k]["params"], state.params)
    np.testing.assert_allclose(results[k]["final"]["test_accuracy"], ref["test_accuracy"], atol=1e-6)
    np.testing.assert_allclose(results[k]["final"]["train_loss"], ref["train_loss"], rtol=1e-4)
  # Different seeds and rates really are different models.
  assert not np.allclose(results[0]["params"]["head"]["kernel"], results[1]["params"]["head"]["kernel"])
  assert not np.allclose(results[0]["params"]["head"]["kernel"], results[2]["params"]["head"]["kernel"])


def test_single_run_equals_reference_run(tmp_path):
  config = tiny_config(epochs=2)
  config.model.dropout_rate = 0.5
  config.data.augment = "flip_crop"   # augmentation keys per step, too
  out = train_and_evaluate(config, str(tmp_path / "run"))
  hp = {"dropout_rate": 0.5, "init_scale": 1.0, "activation": "relu", "learning_rate": 1e-3, "weight_decay": 1e-4,
        "l2": 0.0, "seed": 0}
  state, ref = reference_run(config, hp)
  assert_trees_close(out["state"].params, state.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["history"][-1]["train_loss"], ref["train_loss"], rtol=1e-5)


def test_augmented_sweep_variant_equals_reference_run():
  config = tiny_config()
  config.data.augment = "flip_crop"
  s = sweep.default_sweep()
  s.seeds = 2
  variants = sweep.variants_of(config, s)
  results = sweep.train_variants(config, variants, swept=[])
  state, _ = reference_run(config, variants[1])
  assert_trees_close(results[1]["params"], state.params)


def test_activation_and_init_scale_and_lr_axes_match_reference():
  config = tiny_config()
  s = sweep.default_sweep()
  s.seeds = 1
  s.activation = ("tanh", "elu")
  s.init_scale = (0.5,)
  s.learning_rate = (3e-3,)
  variants = sweep.variants_of(config, s)
  results = sweep.train_variants(config, variants, swept=sweep.swept_axes(s))
  for k, v in enumerate(variants):
    state, _ = reference_run(config, v)
    common = {name: p for name, p in results[k]["params"].items() if not name.startswith("act")}
    assert_trees_close(common, state.params)


def test_weight_decay_and_l2_axes_match_reference():
  config = tiny_config()
  config.optim.name = "adamw"
  s = sweep.default_sweep()
  s.seeds = 1
  assert sweep.variants_of(config, s)[0]["weight_decay"] == config.optim.weight_decay == 1e-4   # one default
  s.weight_decay = (0.0, 0.5)
  s.l2 = (0.05,)
  variants = sweep.variants_of(config, s)
  results = sweep.train_variants(config, variants, swept=sweep.swept_axes(s))
  for k, v in enumerate(variants):
    state, _ = reference_run(config, v)
    assert_trees_close(results[k]["params"], state.params)
  assert not np.allclose(results[0]["params"]["head"]["kernel"], results[1]["params"]["head"]["kernel"])
  config.optim.name = "adam"
  with pytest.raises(ConfigError, match="adamw"):
    sweep.variants_of(config, s)


@pytest.mark.parametrize("strategy", ["vmap", "map", "unroll"])
def test_one_compile_per_group(strategy):
  config = tiny_config(epochs=2)
  s = sweep.default_sweep()
  s.seeds = 3
  s.dropout_rate = (0.0, 0.5)
  ds = data_lib.load(config.data)
  fns = sweep.make_group_fns(config, ds, ["dropout_rate"], strategy)
  loop.run(sweep.program(fns, ds, sweep.variants_of(config, s)), ds, config)
  assert fns.step._cache_size() == 1   # 6 variants x 2 epochs x 6 steps: one compiled train-step program
  assert fns.evaluate._cache_size() == 1


def test_diverging_variant_is_marked_frozen_and_others_unchanged():
  config = tiny_config(epochs=2)
  config.optim.name = "sgd"
  s = sweep.default_sweep()
  s.seeds = 1
  s.learning_rate = (0.05, 1e12)
  variants = sweep.variants_of(config, s)
  both = sweep.train_variants(config, variants, swept=["learning_rate"])
  assert [r["failed"] for r in both] == [False, True]
  state, _ = reference_run(config, variants[0])
  assert_trees_close(both[0]["params"], state.params, rtol=1e-5, atol=1e-6)   # the healthy one: its reference run
  # The failing one stopped updating at its failing step: its parameters are those after the last finite step.
  s_fail = both[1]["failed_at"]
  assert 1 <= s_fail <= 6   # in the first epoch, whose batch order is replayed below
  c1 = tiny_config(epochs=1)
  c1.optim.name, c1.optim.learning_rate = "sgd", 1e12
  ds = data_lib.load(c1.data)
  model = models.get(c1.model, num_classes=10)
  tx = train_lib.make_optimizer(c1.optim, 12)
  k_init, k_data, k_drop = jax.random.split(jax.random.key(0), 3)
  st = train_lib.init_state(model, tx, k_init, ds.train_x[:1])
  step = jax.jit(train_lib.make_train_step(model, tx))
  order = jax.random.permutation(jax.random.fold_in(k_data, 1), 96)[:96].reshape(-1, 16)
  for idx in order[:s_fail - 1]:
    st, _ = step(st, ds.train_x[idx], ds.train_y[idx], k_drop)
  assert_trees_close(both[1]["params"], st.params, rtol=1e-5, atol=1e-6)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(both[1]["params"]))
  rows = sweep.aggregate(both, ["learning_rate"])
  assert rows[1]["failed"] == 1 and np.isnan(rows[1]["test_accuracy_mean"])


def test_grid_point_with_some_seeds_failed():
  mk = lambda seed, acc, failed: {"hparams": {"learning_rate": 0.1, "seed": seed}, "failed": failed,
                                  "final": {"test_accuracy": acc, "test_loss": 1.0, "train_accuracy": acc,
                                            "train_loss": 1.0}}
  rows = sweep.aggregate([mk(0, 0.8, False), mk(1, float("nan"), True), mk(2, 0.6, False)], ["learning_rate"])
  assert rows[0]["seeds"] == 3 and rows[0]["failed"] == 1
  assert rows[0]["test_accuracy_mean"] == pytest.approx(0.7)
  assert rows[0]["test_accuracy_std"] == pytest.approx(np.std([0.8, 0.6], ddof=1))


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
  state, _ = reference_run(config, variants[2])
  assert_trees_close(chunked[2]["params"], state.params)
  assert sweep.chunk_size(16, per_variant=100, budget=450) == 4
  assert sweep.chunk_size(16, per_variant=100, budget=10**9, max_chunk=8) == 8
  assert sweep.chunk_size(3, per_variant=100, budget=10**9) == 3


def test_cpu_variant_cap_from_paired_windows_and_in_the_plan(monkeypatch, tmp_path):
  from jcnn import experiment
  from jcnn.sweep import cpu_chunk
  # Per-window ratios V / single: V=4's median is 0.95 (kept: the floor allows the noise of a shared machine), V=8's
  # 0.94 (dropped); V=16 reads faster again, but the cap stops at the first V that fell behind.
  ratios = {2: [1.01, 1.02, 0.9], 4: [0.95, 0.8, 1.2], 8: [0.94, 0.96, 0.5], 16: [1.2, 1.3, 1.1]}
  assert cpu_chunk.choose(ratios) == {"chunk": 4, "ratio": {"2": 1.01, "4": 0.95, "8": 0.94, "16": 1.2}}
  assert cpu_chunk.choose({2: [0.9, 0.94, 1.3], 4: [1.1]})["chunk"] == 1   # V=2 behind: each variant on its own
  config = tiny_config()
  s = sweep.default_sweep()
  s.seeds = 5
  variants = sweep.variants_of(config, s)
  monkeypatch.setenv("JCNN_VARIANT_CHUNK_CPU", "2")
  assert experiment._plan(config, [config], variants, s, str(tmp_path / "a"), False)[0]["0"] == 2
  s.max_chunk = 1                                 # the smaller of the two caps
  assert experiment._plan(config, [config], variants, s, str(tmp_path / "b"), False)[0]["0"] == 1
  s.max_chunk, s.search, s.rungs = 0, "halving", (1,)   # a search keeps every variant in one program
  config.data.val_size = 16
  assert experiment._plan(config, [config], variants, s, str(tmp_path / "c"), False)[0]["0"] == 5
  monkeypatch.setenv("JCNN_VARIANT_CHUNK_CPU", "0")
  s.search = "grid"
  assert experiment._plan(config, [config], variants, s, str(tmp_path / "d"), False)[0]["0"] == 5
  for bad in ("-1", "abc"):
    monkeypatch.setenv("JCNN_VARIANT_CHUNK_CPU", bad)
    with pytest.raises(ConfigError, match=rf"JCNN_VARIANT_CHUNK_CPU='{bad}': must be an integer >= 0"):
      experiment._plan(config, [config], variants, s, str(tmp_path / "e"), False)


def test_bytes_per_variant_by_hand():
  config = tiny_config()
  model = models.get(config.model, num_classes=10)
  # ConvNet(8, 8, 8; dense 16) on 20x20x1, per example: conv1 18*18*8, act1 same, pool1 9*9*8, conv2 7*7*8, act2,
  # pool2 3*3*8, conv3 1*1*8, act3 8, flatten 8, dropout1 8, dense1 16, act 16, dropout2 16, head 10.
  act = 2 * 18 * 18 * 8 + 9 * 9 * 8 + 2 * 7 * 7 * 8 + 3 * 3 * 8 + 4 * 8 + 3 * 16 + 10
  assert sweep.bytes_per_variant(model, (20, 20, 1), 16, 1562) == 4 * (4 * 1562 + 3 * 16 * act)


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


def test_each_variant_has_its_own_batchnorm_statistics(monkeypatch):
  monkeypatch.setitem(models.ZOO, "bnnet", BNNet)
  config = tiny_config()
  config.model = type(config.model)({"name": "bnnet", "dropout_rate": 0.0, "init_scale": 1.0, "activation": "relu"})
  s = sweep.default_sweep()
  s.seeds = 2
  s.dropout_rate = (0.0, 0.3)
  variants = sweep.variants_of(config, s)
  ds = data_lib.load(config.data)
  res = loop.run(sweep.program(sweep.make_group_fns(config, ds, ["dropout_rate"]), ds, variants), ds, config)
  stats = res["state"].batch_stats["bn"]["mean"]          # [V, 4]
  assert stats.shape == (4, 4)
  assert not np.allclose(stats[0], stats[1]) and not np.allclose(stats[0], stats[2])
  state, _ = reference_run(config, variants[3])
  np.testing.assert_allclose(stats[3], state.batch_stats["bn"]["mean"], rtol=2e-4, atol=2e-5)


def test_aggregate_mean_std_and_rank():
  mk = lambda rate, seed, acc: {"hparams": {"dropout_rate": rate, "seed": seed}, "failed": False,
                                "final": {"test_accuracy": acc, "test_loss": 1.0, "train_accuracy": acc,
                                          "train_loss": 1.0, "val_accuracy": 1 - acc, "val_loss": 1.0}}
  rows = sweep.aggregate([mk(0.0, 0, 0.80), mk(0.0, 1, 0.84), mk(0.5, 0, 0.90), mk(0.5, 1, 0.90)], ["dropout_rate"])
  assert rows[0]["test_accuracy_mean"] == pytest.approx(0.82)
  assert rows[0]["test_accuracy_std"] == pytest.approx(np.std([0.80, 0.84], ddof=1))
  assert rows[1]["test_accuracy_std"] == 0.0 and rows[0]["seeds"] == 2
  # Ranked on validation accuracy (0.18 vs 0.10), not on test accuracy.
  assert rows[0]["rank"] == 1 and rows[1]["rank"] == 2
  table = sweep.markdown_table(rows, ["dropout_rate"])
  assert table.splitlines()[2].startswith("| 1 | 0.0 | 0.1800 ± 0.0283")


def test_run_sweep_writes_files_val_metrics_and_applies_groups(tmp_path):
  config = tiny_config()
  config.data.val_size = 16
  config.train.log_every = 3
  s = ablation_dropout.get_sweep()
  s.seeds = 2
  s.groups = ("model.dense=8",)
  out = run_sweep(config, s, str(tmp_path))
  for f in ("summary.md", "summary.csv", "summary.json", "variants.jsonl", "config.json", "curves.png",
            "accuracy_vs_dropout_rate.png", "accuracy_vs_group.png", "metrics.jsonl"):
    assert (tmp_path / f).exists(), f
  assert len(out["rows"]) == 3 and "± " in out["table"] and "val accuracy" in out["table"]
  assert all("val_accuracy_mean" in r for r in out["rows"])
  assert (tmp_path / "variants.jsonl").read_text().count("\n") == 6
  # The group override really applied: dense1 has 8 units in every variant's parameters (here via the checkpoint).
  from jcnn.train import checkpoint  # pylint: disable=g-import-not-at-top
  ck = checkpoint.Checkpoints(str(tmp_path / "checkpoints" / "0-0"))
  assert ck._mngr.item_metadata(ck.latest_step())["state"].tree["train"]["params"]["dense1"]["kernel"].shape == (6, 8, 8)
  # metrics.jsonl: train rows every 3 steps and one epoch row per variant (80 images / 16 = 5 steps: one train row).
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert sorted({r["variant"] for r in rows}) == list(range(6))
  assert [r["kind"] for r in rows if r["variant"] == 4] == ["train", "epoch"]
  epoch_row = [r for r in rows if r["variant"] == 4 and r["kind"] == "epoch"][0]
  assert {"val_accuracy", "test_accuracy", "train_loss"} <= set(epoch_row) and epoch_row["step"] == 5
  # One TensorBoard run per variant, named by its hyperparameters.
  assert sorted(os.listdir(tmp_path / "tb")) == sorted(f"group=model.dense=8,dropout_rate={r},seed={k}"
                                                       for r in (0.0, 0.25, 0.5) for k in (0, 1))
  with pytest.raises(ConfigError, match="already holds a finished run"):
    run_sweep(config, s, str(tmp_path))
