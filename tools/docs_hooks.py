"""mkdocs hooks: the site's generated tables. A page holds a marker, an HTML comment that GitHub does not show, and
the build replaces it (a marker alone on its line) with a table read from the code or from a benchmark's JSON file, so nothing there is retyped:

  <!-- table: config -->                      every config field: key, default, allowed values, meaning (jcnn.config.SCHEMA)
  <!-- table: sweep-axes -->                  the hyperparameters a sweep may vary (jcnn.config.SWEEP_AXES)
  <!-- table: experiments -->                 experiments/*.py with their descriptions
  <!-- table: throughput FILE.json -->        benchmarks/throughput.py's rows
  <!-- table: sweep FILE.json -->             benchmarks/sweep_throughput.py's rows
  <!-- table: scaling FILE.json -->           benchmarks/scaling.py's rows
  <!-- table: plain-flax FILE.json -->        benchmarks/plain_flax.py: the same convnet written the plain Flax way
  <!-- table: two-processes FILE.json -->     benchmarks/two_processes.py: two 1-core processes against one 2-core
  <!-- table: probe FILE.json -->             benchmarks/chunk_probe.py: what the per-machine chunk probe costs
  <!-- table: precision FILE.json -->         benchmarks/throughput.py --dtype=...: each dtype against float32
  <!-- table: search FILE.json -->            benchmarks/search.py: grid against successive halving and PBT

A benchmark table ends with a line naming the CPU (or GPU) and the command, read from the JSON's `machine` and
`command` keys; a JSON file without them fails the build, as does an unknown marker.
"""
import importlib
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r"^<!-- table: ([\w-]+)(?: (\S+))? -->$", re.M)   # alone on its line


def on_page_markdown(markdown, page, config, files):  # pylint: disable=unused-argument
  """mkdocs calls this for every page: each marker → its table."""
  return MARKER.sub(lambda m: render(m.group(1), m.group(2)), markdown)


def render(kind: str, path: str | None) -> str:
  if kind in ("config", "sweep-axes", "experiments"):
    return {"config": config_table, "sweep-axes": axes_table, "experiments": experiments_table}[kind]()
  if kind not in BENCH or not path:
    raise ValueError(f"unknown table marker {kind!r} {path!r} (tools/docs_hooks.py lists the kinds)")
  with open(os.path.join(ROOT, path)) as f:
    d = json.load(f)
  if "command" not in d or "machine" not in d:
    raise ValueError(f"{path} lacks 'command' or 'machine': a table must name the command and the machine")
  head, rows = BENCH[kind](d)
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  date = f", {d['date']}" if d.get("date") else ""
  return "\n".join(lines) + f"\n\n*{machine(d['machine'])}{date}; `{d['command']}` → `{path}`.*\n"


def machine(m) -> str:
  """The machine's name from a JSON's record: CPU model, cores, matmul rate; or the GPU's name."""
  if isinstance(m, str):
    return m
  name = m.get("gpu") or m.get("model_name") or m.get("cpu") or "unknown machine"
  bits = [name]
  if m.get("family"):
    bits.append(f"family {m['family']} model {m.get('model')}")
  if m.get("cores"):
    bits.append(f"{m['cores']} cores")
  if m.get("matmul_gflops"):
    bits.append(f"{float(m['matmul_gflops']):.0f} matmul GFLOP/s")
  return ", ".join(bits)


def _num(x, digits=0):
  return "-" if x is None else f"{x:,.{digits}f}"


def throughput_rows(d):
  head = ["model", "batch", "jcnn train img/s", "PyTorch train img/s", "train ratio", "jcnn eval img/s",
          "PyTorch eval img/s", "eval ratio", "compile s"]
  rows = []
  for r in d["rows"]:
    ips, ratio = r["images_per_s"], r["ratio_jcnn_over_torch"]
    rows.append([r["model"], r["batch"], _num(ips["jcnn_train"]), _num(ips.get("torch_train")),
                 f"**{ratio['train']:.2f}**" if ratio.get("train") else "-", _num(ips.get("jcnn_eval")),
                 _num(ips.get("torch_eval")), f"{ratio['eval']:.2f}" if ratio.get("eval") else "-",
                 f"{r['compile_train_s']:.1f}"])
  return head, rows


def precision_rows(d):
  head = ["model", "batch", "dtype", "train img/s", "train vs float32", "eval img/s", "eval vs float32"]
  rows = []
  for r in d["rows"]:
    ips, first = r["images_per_s"], r["dtype"]
    rows.append([r["model"], r["batch"], first, _num(ips["jcnn_train"]), "1", _num(ips["jcnn_eval"]), "1"])
    for dt, ratio in r["ratio_over_first_dtype"].items():
      rows.append([r["model"], r["batch"], dt, _num(ips[f"jcnn_train@{dt}"]), f"**{ratio['train']:.2f}**",
                   _num(ips[f"jcnn_eval@{dt}"]), f"{ratio['eval']:.2f}"])
  return head, rows


def plain_flax_rows(d):
  head = ["model", "batch", "plain Flax img/s", "jcnn `make_train_step` img/s", "jcnn's run step img/s",
          "**jcnn / plain Flax**"]
  return head, [[r["model"], r["batch"], _num(r["images_per_s"]["plain_flax"]), _num(r["images_per_s"]["jcnn_step"]),
                 _num(r["images_per_s"]["jcnn_program"]),
                 f"**{r['ratio_over_plain_flax']['jcnn_program']:.2f}** (step alone "
                 f"{r['ratio_over_plain_flax']['jcnn_step']:.2f})"] for r in d["rows"]]


def two_processes_rows(d):
  ips = d["images_per_s"]
  head = ["one process, 2 cores: img/s", "two processes, 1 core each: img/s", "**two / one**", "per-window ratios"]
  return head, [[_num(ips["two_core"]), f"{_num(ips['one_core_a'])} + {_num(ips['one_core_b'])}",
                 f"**{d['ratio_two_one_core_over_one_two_core']:.2f}**",
                 f"{min(d['ratio_per_round']):.2f}-{max(d['ratio_per_round']):.2f}"]]


def probe_rows(d):
  head = ["batch", "probe wall time (median)", "range", "chunk chosen"]
  return head, [[r["batch"], f"{r['median_s']:.1f} s", f"{min(r['seconds']):.1f}-{max(r['seconds']):.1f} s",
                 ", ".join(str(c) for c in r["chunks_chosen"])] for r in d["rows"]]


def sweep_rows(d):
  head = ["variants V", "strategy", "sweep img/s (per model)", "V sequential runs img/s", "**sweep / sequential**",
          "compile s"]
  cap = (d.get("cpu_variant_probe") or {}).get("chunk")
  name = lambda s: f"map, ≤ {cap} per program (the CPU cap)" if s == "capped" else s
  return head, [[r["V"], name(r["strategy"]), _num(r["sweep_model_images_per_s"]), _num(r["sequential_model_images_per_s"]),
                 f"**{r['ratio']:.2f}**", f"{r['compile_s']:.1f}"] for r in d["rows"]]


def scaling_rows(d):
  head = ["axis", "devices", "mesh", "img/s", "compile s"]
  return head, [[r["axis"], r["devices"], r["mesh"], _num(r["images_per_second"]), f"{r['compile_seconds']:.1f}"]
                for r in d["rows"]]


def conv_share_rows(d):
  """benchmarks/conv_lowering.py: per layer, the training call (forward + gradients) in ms and as a share of the
  machine's matmul rate, for each lowering timed."""
  lows = list(d["rows"][0]["V1"])
  head = ["layer (training: forward + gradients)"] + [f"{lo}: ms (share of matmul rate)" for lo in lows]
  return head, [[r["layer"]] + [f"{r['V1'][lo]:.1f} ({r['matmul_share'][lo]:.0%})" for lo in lows]
                for r in d["rows"] if r["mode"] == "train"]


def search_rows(d):
  head = ["search", "wall s", "wall / grid", "variant-epochs", "best val accuracy", "its test accuracy",
          "val vs grid (points)"]
  rows = [[r["arm"], f"{r['wall_seconds']:.0f}", f"**{r.get('wall_vs_grid', 1):.2f}**", r["variant_epochs"],
           f"{r['best_val_accuracy']:.4f}", f"{r['best_test_accuracy']:.4f}", f"{r.get('val_vs_grid_points', 0):+.2f}"]
          for r in d["rows"]]
  return head, rows


BENCH = {"search": search_rows, "conv-share": conv_share_rows, "plain-flax": plain_flax_rows, "two-processes": two_processes_rows, "throughput": throughput_rows, "precision": precision_rows, "probe": probe_rows, "sweep": sweep_rows, "scaling": scaling_rows}


def _jcnn():
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  return importlib.import_module("jcnn.config")


def config_table() -> str:
  config = _jcnn()
  lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
  for section, fields in config.SCHEMA.items():
    for name, f in fields.items():
      key = f"{section}.{name}" if section else name
      allowed = (f.check(object()) or "").removeprefix("must be ") if f.check else "any"
      cells = [f"`{key}`", f"`{f.default!r}`", allowed, f.doc]
      lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
  return "\n".join(lines) + "\n"


def axes_table() -> str:
  config = _jcnn()
  lines = ["| `--sweep.` name | config field it varies | carried as |", "|---|---|---|"]
  for a in config.SWEEP_AXES:
    lines.append(f"| `{a.name}` | `{a.key}` | {a.dtype} |")
  return "\n".join(lines) + "\n"


def experiments_table() -> str:
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  lines = ["| experiment | what it runs | sweep |", "|---|---|---|"]
  for name in sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments"))
                     if f.endswith(".py") and not f.startswith("_")):
    module = importlib.import_module(f"experiments.{name}")
    desc = module.get_config().get("description", "")
    lines.append(f"| `{name}` | {desc.replace('|', '/')} | {'yes' if hasattr(module, 'get_sweep') else ''} |")
  return "\n".join(lines) + "\n"
