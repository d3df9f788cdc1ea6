"""jcnn.data.tfds_source: tiny TFDS datasets prepared here, offline, in ArrayRecord (and TFRecord, to be refused), then
read back at random access. No mocks: real `download_and_prepare`, real files, real `tfds.data_source`."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds  # not skipped when missing: `make test` installs the [tfds] extra

from jcnn.data.tfds_source import TfdsImages, open_prepared
from jcnn.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("cat", "dog", "eel")


def examples(seed: int, n: int, shape: tuple):
  """The generator's arrays: random uint8 images [n, *shape] (all distinct: pixels identify an example) and labels."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n,) + shape, dtype=np.uint8), rng.integers(0, len(NAMES), n).astype(np.int32)


GREY = {"train": examples(0, 12, (8, 8, 1)), "test": examples(1, 7, (8, 8, 1)), "validation": examples(2, 5, (8, 8, 1))}
RGB = {"train": examples(3, 10, (6, 5, 3)), "test": examples(4, 6, (6, 5, 3))}


def builder_class(dataset_name: str, arrays: dict, image_shape: tuple, keys=("image", "label")):
  """A GeneratorBasedBuilder writing `arrays` as the features `keys` (image, label). skip_registration: the name is
  then found only through its files in data_dir, as for a grain worker that never imported this test."""

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = dataset_name  # the dataset's name on disk (else derived from the class name)
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {keys[0]: tfds.features.Image(shape=image_shape), keys[1]: tfds.features.ClassLabel(names=NAMES)}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(split) for split in arrays}

    def _generate_examples(self, split):
      x, y = arrays[split]
      for i in range(len(y)):
        yield i, {keys[0]: x[i], keys[1]: int(y[i])}

  return Builder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Prepares, once: grey (train/test/validation) and rgb in ArrayRecord, rgb again in TFRecord, and the misfits (a
  variable size, a 'picture' feature instead of 'image', no test split) in ArrayRecord. Returns their data_dirs."""
  dirs = {k: str(tmp_path_factory.mktemp(k)) for k in ("array_record", "tfrecord", "misfits")}
  offline = tfds.download.DownloadConfig(try_download_gcs=False)  # nothing to download: the generator makes the data
  builder_class("jcnn_tiny_grey", GREY, (8, 8, 1))(data_dir=dirs["array_record"], file_format="array_record") \
    .download_and_prepare(download_config=offline)
  rgb = builder_class("jcnn_tiny_rgb", RGB, (6, 5, 3))
  rgb(data_dir=dirs["array_record"], file_format="array_record").download_and_prepare(download_config=offline)
  rgb(data_dir=dirs["tfrecord"]).download_and_prepare(download_config=offline)  # TFDS's default format
  for builder in (builder_class("jcnn_tiny_varied", RGB, (None, None, 3)),
                  builder_class("jcnn_tiny_picture", RGB, (6, 5, 3), keys=("picture", "label")),
                  builder_class("jcnn_tiny_no_test", {"train": RGB["train"]}, (6, 5, 3))):
    builder(data_dir=dirs["misfits"], file_format="array_record").download_and_prepare(download_config=offline)
  return dirs


def by_pixels(arrays):
  """pixel bytes -> label, over the generator's examples of one split."""
  x, y = arrays
  table = {x[i].tobytes(): int(y[i]) for i in range(len(y))}
  assert len(table) == len(y)  # distinct images
  return table


def check_split(images, labels, arrays):
  x, y = arrays
  assert isinstance(images, TfdsImages) and images.decodes
  assert images.shape == x.shape and len(images) == len(y) and images.dtype == np.dtype(np.uint8)
  assert labels.dtype == np.int32 and labels.shape == y.shape
  every = images[:]  # [N, H, W, C]: all records, in the order they lie on disk (TFDS shuffles on write)
  assert every.shape == x.shape and every.dtype == np.uint8
  table = by_pixels(arrays)
  # Each record is one of the generator's examples, each example is there once, and each label is its image's.
  assert sorted(im.tobytes() for im in every) == sorted(im.tobytes() for im in x)
  assert [table[im.tobytes()] for im in every] == labels.tolist()
  return every


def test_open_prepared_grey_with_validation(prepared):
  splits, num_classes, class_names = open_prepared("jcnn_tiny_grey", prepared["array_record"])
  assert (num_classes, class_names) == (3, NAMES)
  assert sorted(splits) == ["test", "train", "val"]
  for ours, theirs in (("train", "train"), ("test", "test"), ("val", "validation")):
    images, labels = splits[ours]
    every = check_split(images, labels, GREY[theirs])
    assert images.split == theirs
    idx = np.array([3, 0, 4])
    got = images[idx]  # [3, 8, 8, 1]
    assert got.shape == (3, 8, 8, 1) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, every[idx])
    table = by_pixels(GREY[theirs])
    assert [table[im.tobytes()] for im in got] == labels[idx].tolist()


def test_random_access_rgb(prepared):
  splits, num_classes, class_names = open_prepared("jcnn_tiny_rgb", prepared["array_record"])
  assert sorted(splits) == ["test", "train"] and (num_classes, class_names) == (3, NAMES)
  images, labels = splits["train"]
  every = check_split(images, labels, RGB["train"])
  x, y = RGB["train"]
  # The exact pixels the generator wrote for whichever examples lie at records 3, 0 and 5.
  got = images[np.array([3, 0, 5])]  # [3, 6, 5, 3]
  where = {x[i].tobytes(): i for i in range(len(y))}
  gen = [where[im.tobytes()] for im in got]
  np.testing.assert_array_equal(got, x[gen])
  np.testing.assert_array_equal(labels[[3, 0, 5]], y[gen])
  assert len(set(gen)) == 3
  # Repeats, negative indices, slices and the empty selection behave as numpy's would on `every`.
  for idx in (np.array([5, 5, 0]), np.array([-1, 2]), np.array([], np.int64)):
    np.testing.assert_array_equal(images[idx], every[idx])
  np.testing.assert_array_equal(images[2:9:3], every[2:9:3])
  with pytest.raises(IndexError):
    images[np.array([len(y)])]
  check_split(*splits["test"], RGB["test"])


def test_pickle_reopens_the_source(prepared):
  splits, _, _ = open_prepared("jcnn_tiny_rgb", prepared["array_record"])
  images = splits["train"][0]
  idx = np.array([7, 1, 4])
  before = images[idx]
  restored = pickle.loads(pickle.dumps(images))
  assert restored._source is None  # dropped on pickling  # pylint: disable=protected-access
  assert (restored.name, restored.split, restored.shape) == ("jcnn_tiny_rgb", "train", images.shape)
  np.testing.assert_array_equal(restored[idx], before)


def test_fresh_process_reads_without_tensorflow(prepared):
  """As a grain worker: a new interpreter that never saw the builder class unpickles the images and reads them.
  Importing jcnn.data.tfds_source imports neither TFDS nor TF, and reading imports TFDS but not TF."""
  splits, _, _ = open_prepared("jcnn_tiny_grey", prepared["array_record"])
  images = splits["test"][0]
  idx = np.array([6, 2])
  script = (
      "import pickle, sys\n"
      "import numpy as np\n"
      "import jcnn.data.tfds_source\n"
      "assert 'tensorflow_datasets' not in sys.modules and 'tensorflow' not in sys.modules\n"
      "images = pickle.loads(sys.stdin.buffer.read())\n"
      "sys.stdout.buffer.write(pickle.dumps((images[np.array([6, 2])], 'tensorflow' in sys.modules)))\n")
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  done = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(images), capture_output=True, env=env,
                        cwd=ROOT, timeout=120, check=False)
  assert done.returncode == 0, done.stderr.decode()[-2000:]
  got, tf_imported = pickle.loads(done.stdout)
  np.testing.assert_array_equal(got, images[idx])
  assert not tf_imported


def test_tfrecord_is_refused(prepared):
  with pytest.raises(DataError, match=r"tfrecord, not array_record.*file_format='array_record'"):
    open_prepared("jcnn_tiny_rgb", prepared["tfrecord"])


def test_misfits_are_refused(prepared):
  with pytest.raises(DataError, match="variable or unknown size.*prepare it at one size"):
    open_prepared("jcnn_tiny_varied", prepared["misfits"])
  with pytest.raises(DataError, match=r"no 'image' feature \(it has label, picture\)"):
    open_prepared("jcnn_tiny_picture", prepared["misfits"])
  with pytest.raises(DataError, match=r"no 'test' split \(it has train\)"):
    open_prepared("jcnn_tiny_no_test", prepared["misfits"])


def test_tfds_not_installed(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import tensorflow_datasets` now raises ImportError
  with pytest.raises(DataError, match=r"tensorflow_datasets is not installed: `pip install -e '\.\[tfds\]'`"):
    open_prepared("mnist")


def test_not_prepared(tmp_path):
  with pytest.raises(DataError, match=r"'jcnn_nowhere' is not prepared in .*tfds build jcnn_nowhere "
                                      r"--file_format=array_record"):
    open_prepared("jcnn_nowhere", str(tmp_path))
  with pytest.raises(DataError, match="not prepared"):  # a registered TFDS name, with nothing in this data_dir
    open_prepared("mnist", str(tmp_path))


def test_data_load_reads_a_prepared_dataset_by_name_in_memory_and_streamed(prepared):
  """`data.name=tfds:NAME` through jcnn.data.load: the streamed rows equal the in-memory split (the preprocessing
  included), and its class names are the dataset's."""
  from jcnn import data  # pylint: disable=g-import-not-at-top
  cfg = {"name": "tfds:jcnn_tiny_rgb", "data_dir": prepared["array_record"], "preprocess": "standardize"}
  mem = data.load(dict(cfg, stream="off"))
  flow = data.load(dict(cfg, stream="on"))
  assert flow.streamed and isinstance(flow.train_x, data.Rows) and mem.classes == NAMES and mem.num_classes == 3
  n = len(mem.train_y)
  np.testing.assert_array_equal(flow.train_x[np.arange(n)[::-1]], np.asarray(mem.train_x)[::-1])
  x = RGB["train"][0].astype(np.float64) / 255    # the generator's pixels: the statistics by hand, per channel
  np.testing.assert_allclose(mem.stats["shift"], x.reshape(-1, 3).mean(0), rtol=1e-5)
  np.testing.assert_allclose(mem.stats["div"], x.reshape(-1, 3).std(0), rtol=1e-4)
