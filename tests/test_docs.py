"""The README and the documentation site: every code block runs or is checked, the site builds in strict mode, and
its pages render in headless Chromium (Debian's package; nothing is downloaded at run time).

Code blocks are labelled: ```python blocks are executed as printed (one is executed by the test named in ELSEWHERE,
which has the trained run it needs); every command in a ```bash block is checked the way its program would check it
before doing any work (launch.py: flags parsed, experiment loaded, config and sweep checked; make: the target exists;
python -m jcnn.*: its argument parser accepts it); ```text blocks are printed output and are not run.
"""
import contextlib
import glob
import io
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, require

DOC_FILES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                                               recursive=True))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LANGS = ("python", "bash", "text")
# A python block that needs a trained run is executed by the test that has one: a substring of the block -> that test.
ELSEWHERE = {"ort.InferenceSession": "tests/test_export.py"}
EXTERNAL = ("pip", "tensorboard")   # other programs' commands, not jcnn's


def blocks(lang=None):
  """(file, language, code) of every fenced block in the README and docs/, in order."""
  out = []
  for f in DOC_FILES:
    for m in FENCE.finditer(open(os.path.join(ROOT, f)).read()):
      if lang is None or m.group(1) == lang:
        out.append((f, m.group(1), m.group(2)))
  return out


def docs_block(needle: str) -> str:
  """The one python block that contains `needle` (for the tests in ELSEWHERE)."""
  found = [code for _, _, code in blocks("python") if needle in code]
  assert len(found) == 1, f"{len(found)} python blocks in the docs contain {needle!r}"
  return found[0]


def test_every_block_says_what_it_is():
  bad = [(f, lang, code.splitlines()[0]) for f, lang, code in blocks() if lang not in LANGS]
  assert not bad, f"label each block python, bash or text: {bad}"
  assert len(blocks("python")) >= 4 and len(blocks("bash")) >= 8


def test_python_blocks_elsewhere_are_run_there():
  for needle, test_file in ELSEWHERE.items():
    docs_block(needle)
    assert f"docs_block({needle!r})" in open(os.path.join(ROOT, test_file)).read().replace('"', "'"), test_file


def run_block(code: str, cwd) -> str:
  out = io.StringIO()
  old = os.getcwd()
  os.chdir(cwd)
  try:
    with contextlib.redirect_stdout(out):
      exec(compile(code, "docs", "exec"), {"__name__": "__docs__"})  # pylint: disable=exec-used
  finally:
    os.chdir(old)
  return out.getvalue()


def test_research_code_example_runs_as_printed_and_learns(tmp_path):
  """The README's example (and the same one in getting-started.md), on Fashion-MNIST as printed: 6,000 training
  images, one epoch. Measured 2026-12-02 on the 2-core AMD EPYC: 77.69% test accuracy (chance is 10%)."""
  examples = {code for _, _, code in blocks("python") if "make_train_step" in code}
  assert len(examples) == 1, "README.md and docs/getting-started.md print the same example"
  printed = run_block(examples.pop(), tmp_path)
  result = eval(printed.strip().splitlines()[-1], {"np": np})  # pylint: disable=eval-used
  assert result["count"] == 10000 and result["accuracy"] >= 0.75, result


def test_other_python_blocks_run(tmp_path):
  ran = 0
  for f, _, code in blocks("python"):
    if "make_train_step" in code or any(n in code for n in ELSEWHERE):
      continue
    ns = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      exec(compile(code, f, "exec"), ns)  # pylint: disable=exec-used
    if "def get_sweep" in code:   # the sweep page's example: a grid jcnn accepts, with the values it shows
      from jcnn import config as config_lib, sweep as sweep_lib  # pylint: disable=g-import-not-at-top
      s = ns["get_sweep"]()
      assert tuple(s.dropout_rate) == (0.0, 0.25, 0.5) and s.seeds == 3
      c = config_lib.base_config()
      assert len(sweep_lib.variants_of(c, s)) == 9
    ran += 1
  assert ran >= 1


def commands():
  """(file, argv) of every command in a bash block: continuation lines joined, comments and env assignments dropped."""
  out = []
  for f, _, code in blocks("bash"):
    for line in code.replace("\\\n", " ").splitlines():
      argv = shlex.split(line, comments=True)
      while argv and re.match(r"^[A-Z_]+=", argv[0]):
        argv = argv[1:]
      if argv[:1] == ["srun"]:   # srun's own options, then the program
        argv = argv[next(i for i, a in enumerate(argv) if a == "python"):]
      if argv:
        out.append((f, argv))
  return out


def check_launch(argv):
  import launch  # pylint: disable=g-import-not-at-top
  from jcnn import cli, config as config_lib, sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  fv, experiment = cli.parse(["launch.py", *argv], launch.define_flags)
  if fv.mode == "train" and experiment is not None:
    config_lib.check_config(fv.config)
    if "sweep" in fv:
      variants = sweep_lib.variants_of(fv.config, fv.sweep)
      assert variants
      from jcnn.sweep import search  # pylint: disable=g-import-not-at-top
      search.check(fv.config, fv.sweep, len(variants), sweep_lib.swept_axes(fv.sweep), list(fv.sweep.groups))


def test_every_command_is_one_jcnn_accepts(capsys):
  makefile = open(os.path.join(ROOT, "Makefile")).read()
  seen = set()
  for f, argv in commands():
    where = f"{f}: {' '.join(argv)}"
    prog = os.path.basename(argv[0])
    if prog == "make":
      target = argv[1] if len(argv) > 1 else "run"
      assert re.search(rf"^{re.escape(target)}:", makefile, re.M), where
    elif prog.startswith("python") and argv[1:2] == ["launch.py"]:
      try:
        check_launch(argv[2:])
      except BaseException as e:  # pylint: disable=broad-except  (cli.fail raises its own exit)
        raise AssertionError(f"{where}: {e!r} {capsys.readouterr().err}") from e
    elif prog.startswith("python") and argv[1:3] == ["-m", "jcnn.data"]:
      from jcnn.data import __main__ as data_main  # pylint: disable=g-import-not-at-top
      data_main.parser().parse_args(argv[3:])
    elif prog.startswith("python") and argv[1:3] == ["-m", "jcnn.inspect"]:
      from jcnn.inspect import cli as inspect_cli  # pylint: disable=g-import-not-at-top
      inspect_cli.parser().parse_args(argv[3:])
    else:
      assert prog in EXTERNAL, f"{where}: a command this test does not know how to check"
    seen.add(prog)
  assert {"make", "python", "pip"} <= {p if not p.startswith("python") else "python" for p in seen}


def test_launch_list_runs_as_printed(capsys):
  """`launch.py --list` (the README's second block) for real: every experiment file, one line each."""
  import launch  # pylint: disable=g-import-not-at-top
  assert launch.run(["launch.py", "--list"]) == 0
  names = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()]
  assert names == sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments"))
                         if f.endswith(".py") and not f.startswith("_"))


# ----------------------------------------------------------------------------------------------------------------
# The generated tables (tools/docs_hooks.py).
def hooks():
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  try:
    import docs_hooks  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  return docs_hooks


def test_config_table_has_a_row_per_schema_field():
  from jcnn import config as config_lib  # pylint: disable=g-import-not-at-top
  table = hooks().config_table()
  keys = re.findall(r"^\| `([\w.]+)` \|", table, re.M)
  assert keys == [f"{s}.{k}" if s else k for s, fields in config_lib.SCHEMA.items() for k in fields]
  row = next(r for r in table.splitlines() if r.startswith("| `model.dropout_rate`"))
  assert row == "| `model.dropout_rate` | `0.0` | a finite number >= 0 and < 1 | 0 disables dropout; 0.5 drops half the units |"


def test_benchmark_table_names_machine_and_command(tmp_path):
  h = hooks()
  d = {"command": "python benchmarks/sweep_throughput.py --variants=2", "date": "2026-12-02",
       "machine": {"model_name": "Some CPU", "cores": 2, "matmul_gflops": 171.04},
       "rows": [{"V": 2, "strategy": "map", "sweep_model_images_per_s": 1234.5, "sequential_model_images_per_s": 1000,
                 "ratio": 1.2345, "compile_s": 7.04}]}
  path = tmp_path / "b.json"
  path.write_text(__import__("json").dumps(d))
  rel = os.path.relpath(path, ROOT)
  table = h.render("sweep", rel)
  assert "| 2 | map | 1,234 | 1,000 | **1.23** | 7.0 |" in table      # f"{1234.5:,.0f}": round half to even
  assert f"*Some CPU, 2 cores, 171 matmul GFLOP/s, 2026-12-02; `{d['command']}` → `{rel}`.*" in table
  del d["machine"]
  path.write_text(__import__("json").dumps(d))
  with pytest.raises(ValueError, match="lacks 'command' or 'machine'"):
    h.render("sweep", rel)
  with pytest.raises(ValueError, match="unknown table marker"):
    h.on_page_markdown("<!-- table: nonsense x.json -->", None, None, None)


# ----------------------------------------------------------------------------------------------------------------
# The site.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000"]


def chromium() -> str:
  path = shutil.which("chromium") or shutil.which("chromium-browser")
  if path is None:
    if os.environ.get("JCNN_REQUIRE_TORCH") == "1":
      pytest.fail("chromium is not installed: `make setup` installs Debian's chromium (apt-get install chromium)")
    pytest.skip("chromium is not installed (make setup installs it)")
  return path


def test_site_builds_strict_and_renders_in_chromium(tmp_path):
  require("mkdocs", "docs")
  require("mkdocstrings_handlers.python", "docs")
  site = tmp_path / "site"
  proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  from PIL import Image  # pylint: disable=g-import-not-at-top
  browser = chromium()
  for page, texts in {"experiments.html": ["model.dropout_rate", "fashion_convnet"],   # generated tables, as built
                      "performance.html": ["matmul GFLOP/s", "benchmarks/throughput.py"]}.items():
    html = (site / page).read_text()
    assert all(t in html for t in texts), page
  pages = {"index.html": ["Getting started", "sweeps whose variants train in one compiled program"],   # rendered
           "api/nn.html": ["jcnn.nn.layers", "Conv", "conv_output_size"]}
  for page, texts in pages.items():
    url = (site / page).as_uri()
    profile = tmp_path / f"profile-{page.replace('/', '-')}"
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    text = re.sub(r"<[^>]+>", " ", dom)
    for t in texts:
      assert t in text, (page, t)
    shot = tmp_path / f"{page.replace('/', '-')}.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    img = np.asarray(Image.open(shot).convert("L"), np.float32)       # [1000, 1280]
    assert img.shape == (1000, 1280)
    dark = img < 128                                                  # text, the header bar, code
    assert 0.02 < dark.mean() < 0.6, (page, dark.mean())              # neither blank nor one colour
    rows_with_ink = (dark[100:].mean(axis=1) > 0.005).mean()          # below the header: lines of text
    assert rows_with_ink > 0.2, (page, rows_with_ink)


def test_readme_is_short_and_its_links_resolve():
  """The README is read in two minutes; the site's strict build checks docs/' links, this checks the README's."""
  readme = open(os.path.join(ROOT, "README.md")).read()
  assert len(readme.splitlines()) <= 150
  links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
  assert len(links) >= 10
  missing = [link for link in links if not link.startswith("http") and not os.path.exists(os.path.join(ROOT, link))]
  assert not missing, missing
