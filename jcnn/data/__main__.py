"""Two conversions:

  python -m jcnn.data to-folder --dataset=fashion_mnist --out=DIR [--train_limit=N] [--test_limit=N]
  python -m jcnn.data to-arrays --folder=DIR --out=ARRAYS_DIR [--image_size=H,W] [--channels=1|3]

`to-folder` writes a built-in dataset as PNG files, DIR/train/<class>/*.png and DIR/test/<class>/*.png, with class
folders whose sorted order is the label order ('0-t-shirt-top', '1-trouser', ...): training on DIR
(`--config.data.name=folder --config.data.path=DIR`) reads the same pixels and labels as the built-in dataset.
`to-arrays` decodes an image folder once into x_train.npy, y_train.npy, ... (written chunk by chunk, never held
whole): streaming those (`--config.data.name=arrays --config.data.path=ARRAYS_DIR`) reads rows without decoding
images every epoch."""
from __future__ import annotations

import argparse
import os
import sys
import time

from jcnn.data import folder, sources
from jcnn.errors import UserError


def to_folder(dataset: str, out: str, train_limit: int = 0, test_limit: int = 0, data_dir: str = "") -> dict:
  """Writes `dataset` under `out`; refuses a folder that already holds files. Returns {'train': n, 'test': n}."""
  if os.path.isdir(out) and os.listdir(out):
    raise UserError(f"{out} already holds files; give a new or empty --out folder (nothing was written)")
  if dataset in sources.TEXT_DATASETS or dataset == "synthetic_text":
    raise UserError(f"{dataset} is text, not images: to-folder writes image datasets")
  trx, try_, tex, tey, num_classes = sources.load_raw(dataset, data_dir)
  classes = folder.class_folder_names(num_classes, sources.CLASS_NAMES.get(dataset, ()))
  counts = {}
  for split, x, y, limit in (("train", trx, try_, train_limit), ("test", tex, tey, test_limit)):
    x, y = (x[:limit], y[:limit]) if limit else (x, y)
    t = time.perf_counter()
    counts[split] = folder.write_folder(out, x[..., None] if x.ndim == 3 else x, y, classes, split)
    print(f"{split}: {counts[split]} images in {len(classes)} class folders under {os.path.join(out, split)} "
          f"({time.perf_counter() - t:.1f}s)", flush=True)
  return counts


def to_arrays(root: str, out: str, image_size=(), channels: int = 0) -> dict:
  """Decodes the image folder `root` (as data.name=folder reads it) into `out`/x_<split>.npy, y_<split>.npy and
  classes.txt. Returns {split: n}."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if os.path.isdir(out) and os.listdir(out):
    raise UserError(f"{out} already holds files; give a new or empty --out folder (nothing was written)")
  splits, classes = folder.open_folder(root, tuple(image_size), channels)
  os.makedirs(out, exist_ok=True)
  counts = {}
  for split, (images, labels) in splits.items():
    t = time.perf_counter()
    x = np.lib.format.open_memmap(os.path.join(out, f"x_{split}.npy"), "w+", np.uint8, images.shape)
    for s in range(0, len(images), 1024):
      x[s:s + 1024] = images[np.arange(s, min(s + 1024, len(images)))]
    x.flush()
    del x
    np.save(os.path.join(out, f"y_{split}.npy"), labels.astype(np.int32))
    counts[split] = len(labels)
    print(f"{split}: {len(labels)} images {images.shape[1:]} -> {os.path.join(out, f'x_{split}.npy')} "
          f"({time.perf_counter() - t:.1f}s)", flush=True)
  with open(os.path.join(out, "classes.txt"), "w") as f:
    f.write("\n".join(classes) + "\n")
  return counts


def parser() -> argparse.ArgumentParser:
  """The command line of `python -m jcnn.data` (tests/test_docs.py checks the docs' commands against it)."""
  parser = argparse.ArgumentParser(prog="python -m jcnn.data", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("to-folder", help="write a built-in dataset as PNG class folders")
  p.add_argument("--dataset", required=True, help="fashion_mnist | mnist | cifar10 | synthetic")
  p.add_argument("--out", required=True, help="a new or empty folder")
  p.add_argument("--train_limit", type=int, default=0, help="write only the first N training images (0 = all)")
  p.add_argument("--test_limit", type=int, default=0, help="write only the first N test images (0 = all)")
  p.add_argument("--data_dir", default="", help="extra folder to search for IDX files")
  a = sub.add_parser("to-arrays", help="decode an image folder once into .npy files that stream without decoding")
  a.add_argument("--folder", required=True, help="DIR/<class>/* or DIR/train/<class>/* and DIR/test/<class>/*")
  a.add_argument("--out", required=True, help="a new or empty folder")
  a.add_argument("--image_size", default="", help="H,W to resize to (bilinear), as config.data.image_size")
  a.add_argument("--channels", type=int, default=0, choices=(0, 1, 3), help="as config.data.channels")
  return parser


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  try:
    if args.command == "to-arrays":
      size = tuple(int(v) for v in args.image_size.split(",")) if args.image_size else ()
      to_arrays(args.folder, args.out, size, args.channels)
    else:
      to_folder(args.dataset, args.out, args.train_limit, args.test_limit, args.data_dir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
