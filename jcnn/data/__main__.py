"""`python -m jcnn.data to-folder --dataset=fashion_mnist --out=DIR [--train_limit=N] [--test_limit=N]`: writes a
built-in dataset as PNG files, DIR/train/<class>/*.png and DIR/test/<class>/*.png, with class folders whose sorted
order is the label order ('0-t-shirt-top', '1-trouser', ...). Training on DIR (`--config.data.name=folder
--config.data.path=DIR`) then reads the same pixels and labels as training on the built-in dataset."""
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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jcnn.data", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("to-folder", help="write a built-in dataset as PNG class folders")
  p.add_argument("--dataset", required=True, help="fashion_mnist | mnist | cifar10 | synthetic")
  p.add_argument("--out", required=True, help="a new or empty folder")
  p.add_argument("--train_limit", type=int, default=0, help="write only the first N training images (0 = all)")
  p.add_argument("--test_limit", type=int, default=0, help="write only the first N test images (0 = all)")
  p.add_argument("--data_dir", default="", help="extra folder to search for IDX files")
  args = parser.parse_args(argv)
  try:
    to_folder(args.dataset, args.out, args.train_limit, args.test_limit, args.data_dir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
