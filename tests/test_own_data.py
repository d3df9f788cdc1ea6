"""Your own data: image folders, arrays on disk, CSV tables, and every refusal of bad input (one line naming the fix).

References are independent of jcnn.data: pixels written with Pillow or numpy here, Pillow's documented luma formula
computed by hand, labels from the writer's own list.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from jcnn import data
from jcnn.data import arrays, folder
from jcnn.errors import DataError


def f32(a):
  """uint8 pixels as every split holds them: / 255 (the 'none' preprocessing adds no statistics)."""
  return a.astype(np.float32) / np.float32(255)


def png(path, a):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(a).save(path)


def tiny_folder(root, n=6, size=(5, 4), classes=("ant", "bee", "cat"), split=True, seed=0):
  """root[/train|/test]/<class>/<i>.png with random grey pixels; returns {split: (x [N, H, W, 1], y)} in the order
  a reader of sorted class folders and sorted file names must produce."""
  rng = np.random.default_rng(seed)
  out = {}
  for s in (("train", "test") if split else ("",)):
    xs, ys = [], []
    for c, name in enumerate(classes):
      for i in range(n):
        a = rng.integers(0, 256, size=size, dtype=np.uint8)
        png(os.path.join(root, s, name, f"{i:03d}.png"), a)
        xs.append(a[..., None])
        ys.append(c)
    out[s or "all"] = (np.stack(xs), np.asarray(ys, np.int32))
  return out


def test_folder_with_splits_reads_pixels_labels_and_class_names(tmp_path):
  ref = tiny_folder(str(tmp_path))
  ds = data.load({"name": "folder", "path": str(tmp_path), "preprocess": "none", "stream": "off"})
  assert ds.classes == ("ant", "bee", "cat") and ds.num_classes == 3
  np.testing.assert_array_equal(np.asarray(ds.train_x), f32(ref["train"][0]))
  np.testing.assert_array_equal(np.asarray(ds.train_y), ref["train"][1])
  np.testing.assert_array_equal(np.asarray(ds.test_x), f32(ref["test"][0]))
  streamed = data.load({"name": "folder", "path": str(tmp_path), "preprocess": "none", "stream": "on"})
  assert isinstance(streamed.train_x, data.Rows) and streamed.train_x.shape == (18, 5, 4, 1)
  np.testing.assert_array_equal(streamed.train_x[np.array([17, 0, 6])], f32(ref["train"][0][[17, 0, 6]]))


def test_one_tree_is_split_per_class_by_test_fraction_the_same_for_every_seed(tmp_path):
  ref = tiny_folder(str(tmp_path), n=10, split=False)["all"]
  cfg = {"name": "folder", "path": str(tmp_path), "preprocess": "none", "test_fraction": 0.3, "stream": "off"}
  a, b = data.load(cfg, seed=0), data.load(cfg, seed=5)
  assert len(a.train_y) == 21 and len(a.test_y) == 9 and np.bincount(np.asarray(a.test_y)).tolist() == [3, 3, 3]
  np.testing.assert_array_equal(np.asarray(a.test_x), np.asarray(b.test_x))
  every = {x.tobytes(): y for x, y in zip(f32(ref[0]), ref[1])}    # each image with its label
  got = np.concatenate([np.asarray(a.train_x), np.asarray(a.test_x)])
  labels = np.concatenate([np.asarray(a.train_y), np.asarray(a.test_y)])
  assert sorted(x.tobytes() for x in got) == sorted(every) and all(every[x.tobytes()] == y for x, y in zip(got, labels))


def test_resize_and_channel_conversions(tmp_path):
  """RGB (200, 100, 50) -> grey is Pillow's ITU-R 601-2 luma L = R*299/1000 + G*587/1000 + B*114/1000 = 124.2 -> 124;
  grey -> RGB repeats the value; a constant image stays constant when resized."""
  for c, (name, value) in enumerate((("a", (200, 100, 50)), ("b", (10, 20, 30)))):
    png(str(tmp_path / name / "0.png"), np.full((6, 8, 3), value, np.uint8))
    png(str(tmp_path / name / "1.png"), np.full((3, 5), 77 + c, np.uint8))     # grey, another size
  cfg = {"name": "folder", "path": str(tmp_path), "preprocess": "none", "stream": "off", "test_fraction": 0.5}
  with pytest.raises(DataError, match=r"is (5x3x1|8x6x3) but .* is (8x6x3|5x3x1) .*image_size=\(H, W\)"):
    data.load(cfg)
  grey = folder.FolderImages([str(tmp_path / "a" / "0.png"), str(tmp_path / "a" / "1.png")], (4, 4), 1)
  np.testing.assert_array_equal(grey[np.arange(2)][..., 0], [np.full((4, 4), 124), np.full((4, 4), 77)])
  rgb = folder.FolderImages([str(tmp_path / "a" / "1.png"), str(tmp_path / "b" / "0.png")], (2, 3), 3)
  np.testing.assert_array_equal(rgb[np.arange(2)], [np.full((2, 3, 3), 77), np.broadcast_to([10, 20, 30], (2, 3, 3))])
  ds = data.load(dict(cfg, image_size=(4, 4), channels=3))
  assert ds.image_shape == (4, 4, 3)


def test_write_folder_round_trips_a_built_in_dataset(tmp_path):
  from jcnn.data.__main__ import main
  out = str(tmp_path / "syn")
  assert main(["to-folder", "--dataset=synthetic", f"--out={out}", "--train_limit=30", "--test_limit=10"]) == 0
  ref = data.sources.synthetic()
  names = sorted(os.listdir(os.path.join(out, "train")))
  assert names == [str(i) for i in range(10)]
  ds = data.load({"name": "folder", "path": out, "preprocess": "none", "stream": "off"})
  want = sorted(range(30), key=lambda i: (ref[1][i], i))    # class folders in label order, files in index order
  np.testing.assert_array_equal(np.asarray(ds.train_x), f32(ref[0][want]))
  np.testing.assert_array_equal(np.asarray(ds.train_y), ref[1][want])
  assert main(["to-folder", "--dataset=synthetic", f"--out={out}"]) == 2      # refuses a folder with files
  assert len(os.listdir(os.path.join(out, "train", "0"))) == int((ref[1][:30] == 0).sum())   # nothing lost


def test_to_arrays_decodes_a_folder_once_into_npy_files_with_its_class_names(tmp_path):
  from jcnn.data.__main__ import main
  ref = tiny_folder(str(tmp_path / "png"))
  assert main(["to-arrays", f"--folder={tmp_path / 'png'}", f"--out={tmp_path / 'npy'}"]) == 0
  cfg = {"name": "arrays", "path": str(tmp_path / "npy"), "preprocess": "none", "stream": "on"}
  ds = data.load(cfg)
  assert ds.classes == ("ant", "bee", "cat") and isinstance(ds.train_x.source, arrays.MappedArray)
  np.testing.assert_array_equal(ds.train_x[np.arange(18)], f32(ref["train"][0]))
  np.testing.assert_array_equal(np.asarray(ds.test_y), ref["test"][1])
  assert main(["to-arrays", f"--folder={tmp_path / 'png'}", f"--out={tmp_path / 'npy'}"]) == 2   # not over files


def test_arrays_npz_is_read_by_rows_and_npy_folder_and_compressed_read(tmp_path):
  rng = np.random.default_rng(1)
  x = {s: rng.integers(0, 256, (n, 6, 5), dtype=np.uint8) for s, n in (("train", 40), ("test", 12))}
  y = {s: rng.integers(0, 4, len(v)).astype(np.int64) for s, v in x.items()}
  kw = {f"{k}_{s}": v[s] for s in x for k, v in (("x", x), ("y", y))}
  np.savez(tmp_path / "d.npz", **kw)
  np.savez_compressed(tmp_path / "c.npz", **kw)
  os.makedirs(tmp_path / "npy")
  for k, v in kw.items():
    np.save(tmp_path / "npy" / f"{k}.npy", v)
  splits, k, _ = arrays.open_arrays(str(tmp_path / "d.npz"))
  assert k == 4 and isinstance(splits["train"][0], arrays.MappedArray)     # mapped, not read
  for path in ("d.npz", "c.npz", "npy"):
    ds = data.load({"name": "arrays", "path": str(tmp_path / path), "preprocess": "none", "stream": "off"})
    np.testing.assert_array_equal(np.asarray(ds.train_x)[..., 0], f32(x["train"]))
    np.testing.assert_array_equal(np.asarray(ds.test_y), y["test"])
    assert ds.num_classes == 4


def test_csv_table_features_and_labels(tmp_path):
  (tmp_path / "t.csv").write_text("a,label,b\n1.5,0,2\n-3,1,4e1\n0,1,0\n7,0,8\n1,1,1\n")
  (tmp_path / "split").mkdir()
  (tmp_path / "split" / "train.csv").write_text("x1,x2,y\n1,2,0\n3,4,1\n5,6,1\n")
  (tmp_path / "split" / "test.csv").write_text("x1,x2,y\n7,8,0\n")
  ds = data.load({"name": "csv", "path": str(tmp_path / "split"), "target": "y", "preprocess": "none",
                  "stream": "off"})
  np.testing.assert_array_equal(np.asarray(ds.train_x)[:, 0, 0], [[1, 2], [3, 4], [5, 6]])
  np.testing.assert_array_equal(np.asarray(ds.train_y), [0, 1, 1])
  ds = data.load({"name": "csv", "path": str(tmp_path / "t.csv"), "preprocess": "none", "stream": "off",
                  "test_fraction": 0.4})
  got = sorted(map(tuple, np.concatenate([np.asarray(ds.train_x), np.asarray(ds.test_x)])[:, 0, 0].tolist()))
  assert got == sorted([(1.5, 2), (-3, 40), (0, 0), (7, 8), (1, 1)]) and len(ds.test_y) == 2


# ------------------------------------------------------------------------------------------------------------------
# Bad input: each is one DataError line naming the fix.
def _bad(tmp_path, case):
  """Builds the bad input of `case` under tmp_path; returns (config.data, the message's pattern)."""
  p = str(tmp_path)
  if case == "missing path":
    return {"name": "folder", "path": p + "/nope"}, "is not a folder"
  if case == "no class folders":
    png(p + "/x.png", np.zeros((2, 2), np.uint8))
    return {"name": "folder", "path": p}, "no class sub-folders"
  if case == "empty class":
    tiny_folder(p, n=2, split=False)
    os.makedirs(p + "/dog")
    return {"name": "folder", "path": p}, r"class folder .*dog holds no images"
  if case == "one class":
    tiny_folder(p, n=4, classes=("ant",), split=False)
    return {"name": "folder", "path": p}, "one class .* at least two"
  if case == "corrupt image":
    tiny_folder(p, n=2, split=False)
    with open(p + "/bee/001.png", "wb") as f:
      f.write(b"not a png")
    return {"name": "folder", "path": p, "test_fraction": 0.5}, r"cannot read image .*bee/001.png.*replace or delete"
  if case == "sizes differ":
    tiny_folder(p, n=2, split=False)
    png(p + "/cat/009.png", np.zeros((7, 7), np.uint8))
    return {"name": "folder", "path": p, "test_fraction": 0.5}, r"cat/009.png is 7x7 .*image_size"
  if case == "npz missing key":
    np.savez(p + "/d.npz", x_train=np.zeros((4, 2, 2)), y_train=np.zeros(4), x_test=np.zeros((1, 2, 2)))
    return {"name": "arrays", "path": p + "/d.npz"}, "lacks y_test"
  if case == "x and y lengths":
    np.savez(p + "/d.npz", x_train=np.zeros((4, 2, 2)), y_train=np.zeros(3), x_test=np.zeros((1, 2, 2)),
             y_test=np.zeros(1))
    return {"name": "arrays", "path": p + "/d.npz"}, "x_train has 4 rows but y_train has shape"
  if case == "labels not integers":
    np.savez(p + "/d.npz", x_train=np.zeros((4, 2, 2)), y_train=np.array([0, 1, 0.5, 1]), x_test=np.zeros((1, 2, 2)),
             y_test=np.zeros(1))
    return {"name": "arrays", "path": p + "/d.npz"}, r"y_train\[2\] = 0.5 is not an integer"
  if case == "labels negative":
    np.savez(p + "/d.npz", x_train=np.zeros((4, 2, 2)), y_train=np.array([0, 1, -1, 1]), x_test=np.zeros((1, 2, 2)),
             y_test=np.zeros(1))
    return {"name": "arrays", "path": p + "/d.npz"}, r"y_train\[2\] = -1 is negative"
  if case == "csv target missing":
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    return {"name": "csv", "path": p + "/t.csv"}, "no column 'label' .*config.data.target"
  if case == "csv not numeric":
    (tmp_path / "t.csv").write_text("a,label\n1,0\nred,1\n")
    return {"name": "csv", "path": p + "/t.csv"}, "row 3, column 'a' is 'red', not a number"
  if case == "csv empty cell":
    (tmp_path / "t.csv").write_text("a,label\n1,0\n2,1\n,1\n")
    return {"name": "csv", "path": p + "/t.csv"}, "row 4, column 'a' is empty"
  if case == "stream text":
    return {"name": "synthetic_text", "stream": "on"}, "cannot stream; set config.data.stream=off"
  raise AssertionError(case)


BAD = ["missing path", "no class folders", "empty class", "one class", "corrupt image", "sizes differ",
       "npz missing key", "x and y lengths", "labels not integers", "labels negative", "csv target missing",
       "csv not numeric", "csv empty cell", "stream text"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_naming_the_fix(tmp_path, case):
  cfg, pattern = _bad(tmp_path, case)
  with pytest.raises(DataError, match=pattern) as e:
    data.load(cfg)
  assert "\n" not in str(e.value)


def test_bad_data_from_the_command_line_exits_2_with_one_line_and_writes_nothing(tmp_path):
  tiny_folder(str(tmp_path / "d"), n=2, split=False)
  os.makedirs(tmp_path / "d" / "dog")
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "launch.py", "--experiment=fashion_convnet", f"--workdir={workdir}",
                         "--config.data.name=folder", f"--config.data.path={tmp_path / 'd'}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "dog holds no images" in lines[0]
  assert not workdir.exists()
