"""Data: sources -> preprocessing -> a Dataset on the device -> batches and augmentation inside the step.

  sources      IDX files, TFDS, synthetic images and token ids (host arrays, as stored)
  preprocess   scaling / normalisation with training-split statistics; text tokenisation
  dataset      Dataset and load(config.data): a source, the validation hold-out, preprocessing, arrays on the device
  batches      an epoch's shuffled order as indices [steps, B]; evaluation batches with a mask
  augment      flips and crops on the device, per example, from one key

May import: jcnn.config, jcnn.errors. Nothing above it (nn, models, train, ...).
"""
from jcnn.data.augment import augment
from jcnn.data.batches import epoch_batches, eval_batches
from jcnn.data.dataset import Dataset, load, load_text
from jcnn.data.preprocess import preprocess, tokenize
from jcnn.data.sources import (DEBIAN_DIRS, IDX_FILES, TEXT_DATASETS, TFDS_NAMES, idx_dirs, load_idx, load_raw,
                               load_tfds, read_idx, synthetic, synthetic_text)

__all__ = ["augment", "epoch_batches", "eval_batches", "Dataset", "load", "load_text", "preprocess", "tokenize"]
