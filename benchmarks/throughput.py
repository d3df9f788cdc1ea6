"""Single-model training and evaluation throughput: jcnn against an equivalent PyTorch CPU implementation (issue 5).

  python benchmarks/throughput.py                       # convnet b64/b256, resnet20 b128, vgg11_cifar b128,
                                                        #   densenet_bc100 b64; 7 windows
  python benchmarks/throughput.py --quick               # convnet b64 only, 5 short windows
  python benchmarks/throughput.py --models=convnet:64,convnet:256 --windows=9 --out=throughput.json
  python benchmarks/throughput.py --models=convnet:64,resnet20:128 --dtype=float32,bfloat16,float16   # mixed precision

jcnn runs its real path: the one loop's program step (`jcnn.train.program.single_program`: `make_train_step` inside
the per-model step with its divergence mask, jitted with the state donated, each batch gathered on the device from
device-resident arrays, exactly what `loop.run` calls per step); evaluation runs `make_eval_step`. PyTorch runs the
same layers, optimizer and batch size, at 1 thread and at the core count (the better one, per window, is 'torch').
Both warm up, then windows alternate jcnn-train, torch-train, jcnn-eval, torch-eval, matmul; the table shows medians
over windows and the median of the per-window ratios (the machine is shared and noisy: ratios from one window are
fair, absolute numbers less so). Compile time is reported apart. jcnn's step runs its batch in chunks
(`train.micro_batch_size`: chosen per machine, by a cached measurement, for models without BatchNorm); the other
choice (whole batch, or chunks of 16) is timed too ('other chunk' columns): what the choice gains. Achieved GFLOP/s
use forward FLOPs from `jcnn.inspect.summary.flops_per_example` (x3 for training) against a 2048^3 float32 jnp matmul
measured in the same windows. `--dtype` (config.train.dtype) sets jcnn's compute dtype; more than one (a comma list)
times each further dtype's train and eval steps in the same windows and reports its rate against the first's. The JSON
records the machine (`jcnn.parallel.machine.record`: CPU model, vector extensions, cores, caches, matmul GFLOP/s,
jax/jaxlib) under "machine"; the table's last line names it. The PyTorch twins' parameter counts must equal jcnn's
(checked here and in tests/test_benchmarks.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jcnn import config as config_lib, data as data_lib, models, train  # noqa: E402
from jcnn.inspect import summary  # noqa: E402
from jcnn.parallel import machine, mesh as mesh_lib  # noqa: E402
from jcnn.train import program as program_lib, writers  # noqa: E402

CASES = {  # name -> (model config, input shape [H, W, C], optimizer config)
    "convnet": ({"name": "convnet"}, (28, 28, 1), {"name": "rmsprop", "learning_rate": 1e-3}),
    "resnet20": ({"name": "resnet20"}, (32, 32, 3), {"name": "momentum", "learning_rate": 0.1, "momentum": 0.9}),
    "vgg11_cifar": ({"name": "vgg11_cifar"}, (32, 32, 3), {"name": "momentum", "learning_rate": 0.1, "momentum": 0.9}),
    "densenet_bc100": ({"name": "densenet_bc100"}, (32, 32, 3),
                       {"name": "momentum", "learning_rate": 0.1, "momentum": 0.9}),
}
DEFAULT = "convnet:64,convnet:256,resnet20:128,vgg11_cifar:128,densenet_bc100:64"
N_IMAGES = 4096          # device-resident synthetic dataset the batches are gathered from


# ----------------------------------------------------------------------------------------------------------------
# PyTorch twins (NCHW, same layers and parameter counts).
def torch_model(name: str):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn as tnn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  if name == "convnet":
    class ConvNet(tnn.Module):
      def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = tnn.Conv2d(1, 32, 3), tnn.Conv2d(32, 64, 3), tnn.Conv2d(64, 64, 3)
        self.d1, self.head = tnn.Linear(576, 64), tnn.Linear(64, 10)

      def forward(self, x):                              # [B, 1, 28, 28]
        x = F.max_pool2d(F.relu(self.c1(x)), 2)          # [B, 32, 13, 13]
        x = F.max_pool2d(F.relu(self.c2(x)), 2)          # [B, 64, 5, 5]
        x = F.relu(self.c3(x)).flatten(1)                # [B, 576]
        return self.head(F.relu(self.d1(x)))
    return ConvNet()

  if name == "resnet20":
    class Block(tnn.Module):
      def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1, self.bn1 = tnn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), tnn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = tnn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), tnn.BatchNorm2d(c_out)
        self.stride, self.extra = stride, c_out - c_in

      def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x
        if self.stride != 1 or self.extra:               # option A: subsample and zero-pad channels
          s = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))
        return F.relu(y + s)

    class ResNet20(tnn.Module):
      def __init__(self, n=3):
        super().__init__()
        self.stem, self.bn = tnn.Conv2d(3, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16)
        blocks, c_in = [], 16
        for i, w in enumerate((16, 32, 64)):
          for j in range(n):
            blocks.append(Block(c_in, w, 2 if i > 0 and j == 0 else 1))
            c_in = w
        self.blocks, self.head = tnn.Sequential(*blocks), tnn.Linear(64, 10)

      def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.head(x.mean((2, 3)))
    return ResNet20()

  if name == "vgg11_cifar":   # VGG-11-BN, CIFAR head (jcnn.models.vgg: convs without bias, BN, global pool, dropout, fc)
    layers, c_in = [], 3
    for n, w in zip((1, 1, 2, 2, 2), (64, 128, 256, 512, 512)):
      for _ in range(n):
        layers += [tnn.Conv2d(c_in, w, 3, 1, 1, bias=False), tnn.BatchNorm2d(w), tnn.ReLU(inplace=True)]
        c_in = w
      layers.append(tnn.MaxPool2d(2))
    return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Dropout(0.5), tnn.Linear(512, 10))

  if name == "densenet_bc100":   # DenseNet-BC, L = 100, k = 12 (jcnn.models.densenet, stem='cifar')
    def pre_act_conv(c_in, c_out, k):   # BN-ReLU-conv, no bias
      return [tnn.BatchNorm2d(c_in), tnn.ReLU(inplace=True), tnn.Conv2d(c_in, c_out, k, 1, k // 2, bias=False)]

    class DenseLayer(tnn.Module):
      def __init__(self, c_in, k):
        super().__init__()
        self.f = tnn.Sequential(*pre_act_conv(c_in, 4 * k, 1), *pre_act_conv(4 * k, k, 3))

      def forward(self, x):
        return torch.cat([x, self.f(x)], 1)

    k, n, c = 12, 16, 24
    layers = [tnn.Conv2d(3, c, 3, 1, 1, bias=False)]
    for b in range(3):
      for _ in range(n):
        layers.append(DenseLayer(c, k))
        c += k
      if b < 2:
        layers += pre_act_conv(c, c // 2, 1) + [tnn.AvgPool2d(2)]
        c //= 2
    return tnn.Sequential(*layers, tnn.BatchNorm2d(c), tnn.ReLU(inplace=True), tnn.AdaptiveAvgPool2d(1),
                          tnn.Flatten(), tnn.Linear(c, 10))
  raise ValueError(f"no PyTorch twin for {name!r}")


def torch_optimizer(cfg, params):
  import torch  # pylint: disable=g-import-not-at-top
  if cfg["name"] == "rmsprop":   # Keras' RMSprop, as jcnn's make_optimizer
    return torch.optim.RMSprop(params, lr=cfg["learning_rate"], alpha=0.9, eps=1e-7)
  if cfg["name"] == "momentum":
    return torch.optim.SGD(params, lr=cfg["learning_rate"], momentum=cfg.get("momentum", 0.9))
  raise ValueError(cfg["name"])


# ----------------------------------------------------------------------------------------------------------------
def build_jcnn(name: str, batch: int, images, labels, batches, micro_batch: int = 0, dtype: str = "float32"):
  model_cfg, shape, optim_cfg = CASES[name]
  config = config_lib.base_config()
  config.model.update(model_cfg)
  config.optim.update(optim_cfg)
  config.train.batch_size, config.train.micro_batch, config.train.dtype = batch, micro_batch, dtype
  mesh = mesh_lib.make(config)   # as train_and_evaluate: the data and program on this machine's mesh
  ds = data_lib.Dataset(name, mesh_lib.put_rows(np.asarray(images), mesh),
                        mesh_lib.put(np.asarray(labels), mesh_lib.replicated(mesh)), None, None, None, None, 10, {})
  program = program_lib.single_program(config, ds, mesh)   # the step loop.run calls
  model = models.get(config.model, num_classes=10)
  eval_step = train.make_eval_step(model, micro_batch=micro_batch, dtype=dtype)

  @jax.jit
  def run_eval(state, images, labels, batches, i):
    idx = batches[i % batches.shape[0]]
    return eval_step(state, images[idx], labels[idx], jnp.ones((batch,), bool))

  box = {"rs": program.init(), "i": 0}
  t0 = time.perf_counter()
  box["rs"] = program.step(box["rs"], batches)         # compiles (one step included)
  jax.block_until_ready(box["rs"].acc)
  compile_train = time.perf_counter() - t0
  t0 = time.perf_counter()
  run_eval = run_eval.lower(box["rs"].train, images, labels, batches, 0).compile()
  compile_eval = time.perf_counter() - t0
  state = box["rs"].train

  def train_n(n):
    for _ in range(n):
      box["rs"] = program.step(box["rs"], batches)
    jax.block_until_ready(box["rs"].acc)

  def eval_n(n):
    out = None
    for _ in range(n):
      box["i"] += 1
      out = run_eval(box["rs"].train, images, labels, batches, box["i"])
    jax.block_until_ready(out)

  flops = summary.flops_per_example(model, shape)
  params = summary.count_params(state.params)
  return train_n, eval_n, {"train_chunk": train.micro_batch_size(batch, micro_batch, bool(state.batch_stats)),
                           "batch_norm": bool(state.batch_stats),
                           "compile_train_s": compile_train, "compile_eval_s": compile_eval,
                           "forward_flops_per_image": flops, "params": params}


def build_torch(name: str, images_nchw, labels, batches):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  net = torch_model(name)
  opt = torch_optimizer(CASES[name][2], net.parameters())
  box = {"i": 0}

  def train_n(n):
    net.train()
    for _ in range(n):
      idx = batches[box["i"] % len(batches)]
      box["i"] += 1
      opt.zero_grad(set_to_none=True)
      F.cross_entropy(net(images_nchw[idx]), labels[idx]).backward()
      opt.step()

  def eval_n(n):
    net.eval()
    with torch.no_grad():
      for _ in range(n):
        idx = batches[box["i"] % len(batches)]
        box["i"] += 1
        logits = net(images_nchw[idx])
        F.cross_entropy(logits, labels[idx], reduction="sum").item()
        (logits.argmax(-1) == labels[idx]).sum().item()

  return train_n, eval_n, {"params": sum(p.numel() for p in net.parameters())}


def timed(fn, n):
  t0 = time.perf_counter()
  fn(n)
  return time.perf_counter() - t0


def calibrate(fn, target_s):
  """Steps per window so one window lasts about target_s."""
  dt = timed(fn, 2) / 2
  return max(2, int(target_s / max(dt, 1e-6)))


def with_threads(fn, n):
  import torch  # pylint: disable=g-import-not-at-top

  def f(k):
    torch.set_num_threads(n)
    return fn(k)
  return f


def run_case(name, batch, windows, window_s, mm, torch_threads, dtypes=("float32",)):
  import torch  # pylint: disable=g-import-not-at-top
  shape = CASES[name][1]
  rng = np.random.default_rng(0)
  x = rng.random((N_IMAGES,) + shape, np.float32)
  y = rng.integers(0, 10, N_IMAGES).astype(np.int32)
  order = rng.permutation(N_IMAGES)[: (N_IMAGES // batch) * batch].reshape(-1, batch)
  j_train, j_eval, j_info = build_jcnn(name, batch, jnp.asarray(x), jnp.asarray(y), jnp.asarray(order),
                                       dtype=dtypes[0])
  t_train, t_eval, t_info = build_torch(name, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                        torch.from_numpy(y.astype(np.int64)), torch.from_numpy(order.astype(np.int64)))
  if j_info["params"] != t_info["params"]:
    raise AssertionError(f"{name}: PyTorch twin has {t_info['params']:,} parameters, jcnn {j_info['params']:,}")
  fns = {"jcnn_train": j_train, "jcnn_eval": j_eval}
  chunk = j_info["train_chunk"]
  # The automatic chunk size is chosen per machine (train.micro_batch_size -> machine.cpu_micro_batch); the other
  # choice is timed too, for the record of what the choice gains: the whole batch where it chunks, chunks of
  # MICRO_BATCH_CPU where it does not (models without BatchNorm only: with it chunks change the statistics).
  alt = batch if chunk != batch else (None if j_info["batch_norm"] else train.micro_batch_size(batch, train.MICRO_BATCH_CPU))
  if alt is not None and alt != chunk:
    a_train, a_eval, _ = build_jcnn(name, batch, jnp.asarray(x), jnp.asarray(y), jnp.asarray(order), alt,
                                   dtype=dtypes[0])
    fns.update({"jcnn_alt_train": a_train, "jcnn_alt_eval": a_eval})
  for d in dtypes[1:]:   # further compute dtypes, in the same windows
    d_train, d_eval, d_info = build_jcnn(name, batch, jnp.asarray(x), jnp.asarray(y), jnp.asarray(order), dtype=d)
    fns.update({f"jcnn_train@{d}": d_train, f"jcnn_eval@{d}": d_eval})
    j_info[f"compile_train_s@{d}"] = d_info["compile_train_s"]
  for n in torch_threads:   # PyTorch at each thread count; the ratio is against its best in each window
    fns[f"torch{n}_train"], fns[f"torch{n}_eval"] = with_threads(t_train, n), with_threads(t_eval, n)
  for f in fns.values():    # warm-up (first jcnn call also pays its last lazy init)
    f(3)
  steps = {k: calibrate(f, window_s) for k, f in fns.items()}
  rates = {k: [] for k in fns}
  mm_rates = []
  for _ in range(windows):
    for k, f in fns.items():
      rates[k].append(steps[k] * batch / timed(f, steps[k]))
    mm_rates.append(mm())
  for m in ("train", "eval"):
    rates[f"torch_{m}"] = list(np.max([rates[f"torch{n}_{m}"] for n in torch_threads], axis=0))
  med = {k: float(np.median(v)) for k, v in rates.items()}
  ratio = {m: float(np.median(np.array(rates[f"jcnn_{m}"]) / np.array(rates[f"torch_{m}"]))) for m in ("train", "eval")}
  flops = j_info["forward_flops_per_image"]
  matmul = float(np.median(mm_rates))
  by_dtype = {d: {m: float(np.median(np.array(rates[f"jcnn_{m}@{d}"]) / np.array(rates[f"jcnn_{m}"])))
                  for m in ("train", "eval")} for d in dtypes[1:]}   # median per-window ratio to dtypes[0]
  return {"model": name, "batch": batch, "train_chunk": chunk, "alt_chunk": alt if "jcnn_alt_train" in fns else None,
          "dtype": dtypes[0], "ratio_over_first_dtype": by_dtype,
          "compile_train_s_by_dtype": {d: j_info[f"compile_train_s@{d}"] for d in dtypes[1:]},
          "images_per_s": med, "ratio_jcnn_over_torch": ratio,
          "windows": {k: [round(v, 1) for v in vs] for k, vs in rates.items()}, "steps_per_window": steps,
          "compile_train_s": j_info["compile_train_s"], "compile_eval_s": j_info["compile_eval_s"],
          "params_jcnn": j_info["params"], "params_torch": t_info["params"], "forward_mflops_per_image": flops / 1e6,
          "matmul_gflops": matmul,
          "gflops": {k: med[k] * flops * (3 if "train" in k else 1) / 1e9 for k in med},
          "fraction_of_matmul": {k: med[k] * flops * (3 if "train" in k else 1) / 1e9 / matmul for k in med}}


def make_matmul(n=2048, reps=3):
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))

  def rate():
    t0 = time.perf_counter()
    for _ in range(reps):
      out = f(a)
    jax.block_until_ready(out)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9
  return rate


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default=None, help=f"comma list of model:batch (default {DEFAULT})")
  p.add_argument("--windows", type=int, default=None, help="timed windows per implementation (median; default 7)")
  p.add_argument("--window_s", type=float, default=None, help="seconds per window (default 1.0)")
  p.add_argument("--quick", action="store_true", help="convnet:64 only, 5 windows of 0.5 s")
  p.add_argument("--torch_threads", default="", help="comma list of PyTorch thread counts to time (default 1 and "
                 "the core count); ratios are against the best per window: on a loaded machine PyTorch's OpenMP at 2 "
                 "threads can collapse (measured 113 img/s vs 1,546 at 1 thread)")
  p.add_argument("--dtype", default="float32", help="jcnn's compute dtype (config.train.dtype); a comma list times "
                 "each further dtype against the first in the same windows")
  p.add_argument("--out", default="", help="write the results as JSON here")
  args = p.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  threads = int(os.environ.get("JCNN_BENCH_THREADS", os.cpu_count() or 1))
  torch_threads = sorted({int(t) for t in args.torch_threads.split(",")} if args.torch_threads else {1, threads})
  spec = args.models or ("convnet:64" if args.quick else DEFAULT)
  windows = args.windows or (5 if args.quick else 7)
  window_s = args.window_s or (0.5 if args.quick else 1.0)
  mm = make_matmul()
  rows, skipped = [], []
  for item in spec.split(","):
    name, batch = item.split(":")
    try:
      models.get(CASES[name][0])
    except Exception as e:  # pylint: disable=broad-except  (a model another engineer has not landed yet)
      skipped.append(f"{item}: {e}")
      print(f"skipping {item}: {e}", flush=True)
      continue
    print(f"measuring {item} ...", flush=True)
    rows.append(run_case(name, int(batch), windows, window_s, mm, torch_threads, tuple(args.dtype.split(","))))
  print(f"\njax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} (best of {torch_threads} "
        f"threads per window), "
        f"{os.cpu_count()} cores; {windows} windows of ~{window_s}s, medians; ratio = median of per-window ratios")
  print(f"{'model':10s} {'batch':>5s} {'chunk':>5s} | {'jcnn train':>10s} {'torch train':>11s} {'ratio':>6s} | "
        f"{'jcnn eval':>9s} {'torch eval':>10s} {'ratio':>6s} | {'compile s':>9s} | {'train GFLOP/s':>13s} "
        f"{'of matmul':>9s} | {'other chunk: train, eval':>28s}")
  for r in rows:
    m, q = r["images_per_s"], r["ratio_jcnn_over_torch"]
    whole = (f"{r['alt_chunk']:4d}: {m['jcnn_alt_train']:10.0f} {m['jcnn_alt_eval']:11.0f}" if r["alt_chunk"]
             else "-")
    print(f"{r['model']:10s} {r['batch']:5d} {r['train_chunk']:5d} | {m['jcnn_train']:10.0f} {m['torch_train']:11.0f} "
          f"{q['train']:6.2f} | {m['jcnn_eval']:9.0f} {m['torch_eval']:10.0f} {q['eval']:6.2f} | "
          f"{r['compile_train_s']:9.1f} | {r['gflops']['jcnn_train']:13.1f} "
          f"{r['fraction_of_matmul']['jcnn_train']:9.0%} | {whole:>28s}")
  for r in rows:
    if r["ratio_over_first_dtype"]:
      m = r["images_per_s"]
      print(f"{r['model']} batch {r['batch']}, compute dtype against {r['dtype']} ({m['jcnn_train']:.0f} train, "
            f"{m['jcnn_eval']:.0f} eval img/s): " + "; ".join(
                f"{d} {m[f'jcnn_train@{d}']:.0f} train ({q['train']:.2f}x), {m[f'jcnn_eval@{d}']:.0f} eval "
                f"({q['eval']:.2f}x), compile {r['compile_train_s_by_dtype'][d]:.1f}s"
                for d, q in r["ratio_over_first_dtype"].items()))
  matmul = float(np.median([r["matmul_gflops"] for r in rows])) if rows else mm()
  rec = machine.record(matmul)
  print(f"machine: {machine.describe(rec)} (median over windows)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"command": machine.command_line(), "date": time.strftime("%Y-%m-%d"), "rows": rows, "skipped": skipped, "machine": rec, "record": writers.run_record(),
                 "torch_threads": torch_threads,
                 "windows": windows, "window_s": window_s}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
