"""Data: sources -> preprocessing -> a Dataset on the device -> batches and augmentation inside the step.

  sources      built-in datasets: IDX files, TFDS, synthetic images and token ids (host arrays, as stored)
  folder       your images: DIR/<class>/*.png (or DIR/train/, DIR/test/), decoded on read; write_folder
  arrays       your arrays: an .npz or .npy files, memory-mapped
  tables       your tables: CSV feature columns and a target column
  toys         the course's first problems in memory: logic gates, regression curves, moons / circles / spirals
  tfds_source  a TFDS dataset prepared on disk, read at random through tfds.data_source
  rows         one split as random access, padded and preprocessed on read (Rows)
  preprocess   scaling / normalisation with training-split statistics (fit once, apply per batch); tokenisation
  dataset      Dataset and load(config.data): a source, the validation hold-out, statistics, device or stream
  batches      an epoch's shuffled order as indices [steps, B]; evaluation batches with a mask
  stream       grain: batches of Rows fetched in a given order by worker threads or processes
  augment      flips and crops on the device, per example, from one key

May import: jcnn.config, jcnn.errors. Nothing above it (nn, models, train, ...).
"""
from jcnn.data.augment import augment
from jcnn.data.batches import epoch_batches, eval_batches
from jcnn.data.dataset import Dataset, load, load_text, open_source
from jcnn.data.folder import write_folder
from jcnn.data import preprocess   # the module (fit, apply, inverse)
from jcnn.data.preprocess import tokenize
from jcnn.data.rows import Rows
from jcnn.data.sources import (DEBIAN_DIRS, IDX_FILES, TEXT_DATASETS, TFDS_NAMES, idx_dirs, load_idx, load_raw,
                               load_tfds, read_idx, synthetic, synthetic_text)

__all__ = ["augment", "epoch_batches", "eval_batches", "Dataset", "load", "load_text", "open_source", "preprocess",
           "tokenize", "Rows", "write_folder"]
