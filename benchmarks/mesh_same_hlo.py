"""Is the single run's compiled train step on a 1-device mesh the same program as the mesh-less step?

  python benchmarks/mesh_same_hlo.py                                   # fashion_convnet on synthetic data, batch 64
  python benchmarks/mesh_same_hlo.py --out=benchmarks/results/mesh_same_hlo.json

Runs itself twice as a child process, each with XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text: once the way
train_and_evaluate runs a single run (`mesh.make`, `mesh.load`, `program.single_program(config, ds, mesh)`), once
mesh-less (`data.load`, `single_program(config, ds)`); each builds the program, runs init and one step. Then it reads
the optimized HLO XLA compiled for the step (the `*after_optimizations.txt` module whose name holds the step's jit)
and compares the two: the raw text's sha256, and the sha256 after removing what a mesh adds by itself (`sharding={...}`
and Shardy's `xla.sdy.*` attributes, the module header line) and what names only the source (`metadata={...}`, the
stack-frame tables, module names, instruction numbers: renumbered in order of first appearance). Prints, and writes
as JSON, both hashes of each side, whether they are equal, and the lines that differ after normalising.
"""
from __future__ import annotations

import argparse
import difflib
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STEP_MODULE = "jit__lambda"     # single_program's step: jax.jit(lambda rs, h, x, y, b: ...)


def child(use_mesh: bool, batch: int):
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import fashion_convnet  # pylint: disable=g-import-not-at-top
  from jcnn import data as data_lib  # pylint: disable=g-import-not-at-top
  from jcnn.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from jcnn.train import program as program_lib  # pylint: disable=g-import-not-at-top
  c = fashion_convnet.get_config()
  c.data.name, c.data.synthetic_size, c.train.batch_size = "synthetic", (256, 64), batch
  if use_mesh:
    mesh = mesh_lib.make(c)
    ds = mesh_lib.load(c.data, mesh, seed=c.train.seed)
    p = program_lib.single_program(c, ds, mesh)
  else:
    ds = data_lib.load(c.data, seed=c.train.seed)
    p = program_lib.single_program(c, ds)
  rs = p.step(p.init(), p.batches(0))
  jax.block_until_ready(rs)
  print(f"devices {jax.device_count()} mesh {dict(p.mesh.shape) if p.mesh is not None else None}", flush=True)


NORMALISE = [(re.compile(r",? ?sharding=\{[^{}]*(\{[^{}]*\}[^{}]*)*\}"), ""),     # sharding={...} (one nesting)
             (re.compile(r'xla\.sdy\.[\w.]*="(?:[^"\\]|\\.)*",? ?'), ""),             # Shardy's sharding attributes
             (re.compile(r",? ?frontend_attributes=\{\}"), ""),                 # (left empty by the line above)
             (re.compile(r",? ?metadata=\{[^{}]*\}"), ""),                      # source locations and op names
             (re.compile(r"^HloModule .*$", re.M), "HloModule"),                # name, layouts, spmd flags
             (re.compile(r"^(FileNames|FunctionNames|FileLocations|StackFrames)\n(.+\n)*", re.M), "")]  # source lines


NAME = re.compile(r"(?<![\w.])(%?[A-Za-z_][\w\-]*)\.(\d+)(?![\w])")   # instruction / computation names: add.12


def normalise(text: str) -> str:
  """Without sharding attributes, metadata and the header; names renumbered in order of first appearance (XLA numbers
  instructions and computations by creation order, which differs by the few ops a mesh adds before partitioning)."""
  for pattern, repl in NORMALISE:
    text = pattern.sub(repl, text)
  names: dict[str, str] = {}

  def rename(m):
    return names.setdefault(m.group(0), f"{m.group(1)}.{len(names)}")
  return NAME.sub(rename, text)


def step_hlo(dump_dir: str) -> tuple[str, list[str]]:
  files = sorted(glob.glob(os.path.join(dump_dir, f"*.{STEP_MODULE}*after_optimizations.txt")))
  if not files:
    raise SystemExit(f"no optimized HLO of {STEP_MODULE} in {dump_dir}: "
                     f"{sorted(os.listdir(dump_dir))[:20]}")
  with open(files[-1]) as f:
    return f.read(), [os.path.basename(x) for x in files]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--out", default="", help="write the results as JSON here")
  p.add_argument("--dump_dir", default="", help="keep XLA's dumps here (reused if it holds both already)")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)   # 'mesh' or 'plain'
  args = p.parse_args(argv)
  if args.child:
    return child(args.child == "mesh", args.batch)
  sides = {}
  with tempfile.TemporaryDirectory() as tmp:
    for side in ("plain", "mesh"):
      dump = os.path.join(args.dump_dir or tmp, side)
      if args.dump_dir and glob.glob(os.path.join(dump, f"*.{STEP_MODULE}*after_optimizations.txt")):
        text, files = step_hlo(dump)
        sides[side] = {"text": text, "normalised": normalise(text), "files": files, "child": f"(reused {dump})"}
        continue
      env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                                          f" --xla_dump_to={dump} --xla_dump_hlo_as_text").strip(),
             "JCNN_COMPILATION_CACHE": "0"}
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--child={side}", f"--batch={args.batch}"],
                            env=env, capture_output=True, text=True, timeout=600)
      if proc.returncode:
        raise SystemExit(f"{side} child failed:\n{proc.stderr[-3000:]}")
      text, files = step_hlo(dump)
      sides[side] = {"text": text, "normalised": normalise(text), "files": files,
                     "child": proc.stdout.strip().splitlines()[-1]}
  raw = {k: hashlib.sha256(v["text"].encode()).hexdigest()[:16] for k, v in sides.items()}
  norm = {k: hashlib.sha256(v["normalised"].encode()).hexdigest()[:16] for k, v in sides.items()}
  diff = [line for line in difflib.unified_diff(sides["plain"]["normalised"].splitlines(),
                                                sides["mesh"]["normalised"].splitlines(), lineterm="", n=0)
          if line[:1] in "+-" and line[:3] not in ("+++", "---")]
  shardings = {k: v["text"].count("sharding={") for k, v in sides.items()}
  sys.path.insert(0, ROOT)
  from jcnn.parallel import machine  # pylint: disable=g-import-not-at-top
  from jcnn.train import writers  # pylint: disable=g-import-not-at-top
  rec = machine.record()
  for k in sides:
    print(f"{k:5s} ({sides[k]['child']}): step HLO {len(sides[k]['text'])} characters, {shardings[k]} sharding "
          f"annotations; sha256 raw {raw[k]}, without shardings/metadata/header {norm[k]}")
  same = norm["plain"] == norm["mesh"]
  print(f"same HLO apart from sharding annotations: {same} ({len(diff)} differing lines"
        + (f"; first: {diff[:4]}" if diff else "") + ")")
  print(f"raw text identical: {raw['plain'] == raw['mesh']}")
  print(f"machine: {machine.describe(rec)}")
  result = {"batch": args.batch, "sha256_raw": raw, "sha256_normalised": norm, "same_normalised": same,
            "same_raw": raw["plain"] == raw["mesh"], "differing_lines": diff[:50], "n_differing_lines": len(diff),
            "sharding_annotations": shardings,
            "characters": {k: {"raw": len(v["text"]), "normalised": len(v["normalised"])} for k, v in sides.items()},
            "hlo_files": {k: v["files"] for k, v in sides.items()},
            "children": {k: v["child"] for k, v in sides.items()}, "machine": rec, "record": writers.run_record(),
            "command": machine.command_line()}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
