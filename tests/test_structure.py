"""The house's shape, read from the code's own imports (every `import` statement, also those inside functions):
no import circles among jcnn's modules, no arrow from a lower package up to a higher one, no import of `experiments`
from the library, and a thin launch.py. The checker is tested on small made-up packages first, so it can fail."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The floors, bottom first: a module may import its own package and the floors below its own. docs/contributing.md's
# architecture table lists the same floors in the same order (checked below).
FLOORS = ("jcnn.errors", "jcnn.nn", "jcnn.models", "jcnn.config", "jcnn.data", "jcnn.parallel", "jcnn.train",
          "jcnn.inspect", "jcnn.sweep", "jcnn.experiment", "jcnn.export", "jcnn.cli")


def modules(root: str, package: str) -> dict[str, str]:
  """{'pkg.sub.mod': path} for every .py file under root/package (a package's __init__ is the package itself)."""
  out = {}
  for folder, _, files in os.walk(os.path.join(root, package)):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, f), root)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, f)
  return out


def imports(path: str, names: set[str]) -> list[tuple[str, int]]:
  """(module, line) for each import of `path` that names one of `names` (or something inside one of them).
  `from a.b import c` is the module a.b.c when that is a module, else a.b."""
  out = []
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      out += [(a.name, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        out.append((sub if sub in names else node.module, node.lineno))
  return [(m, line) for m, line in out if any(m == n or m.startswith(n + ".") for n in names) or
          m.split(".")[0] == "experiments"]


def graph(root: str, package: str) -> dict[str, list[tuple[str, int]]]:
  mods = modules(root, package)
  return {m: [(t, line) for t, line in imports(p, set(mods)) if t != m] for m, p in mods.items()}


def circles(g: dict) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w, _ in g.get(v, ()):
      if w not in g:
        continue
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(g):
    if v not in index:
      visit(v)
  return out


def floor(module: str, floors) -> int:
  best = [i for i, f in enumerate(floors) if module == f or module.startswith(f + ".")]
  if not best:
    raise AssertionError(f"{module} is on no floor: add its package to FLOORS (tests/test_structure.py) and the "
                         f"README's architecture table")
  return best[0]


def upward(g: dict, floors) -> list[str]:
  """'a -> b (line n)' for every import of a module on a higher floor, or of `experiments`."""
  bad = []
  for m, targets in sorted(g.items()):
    for t, line in targets:
      if t.split(".")[0] == "experiments":
        bad.append(f"{m} -> {t} (line {line}): the library never imports an experiment")
      elif floor(t, floors) > floor(m, floors):
        bad.append(f"{m} -> {t} (line {line}): an arrow up from {floors[floor(m, floors)]} to {floors[floor(t, floors)]}")
  return bad


def write(root, files: dict[str, str]):
  for rel, text in files.items():
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(text)


# ----------------------------------------------------------------------------------------------------------------
# The checker, on made-up packages.
def test_checker_finds_a_circle_through_a_lazy_import(tmp_path):
  write(tmp_path, {"p/__init__.py": "", "p/a.py": "from p import b\n",
                   "p/b.py": "def f():\n  from p.c import g\n", "p/c.py": "import p.a\n", "p/d.py": "from p import a\n"})
  g = graph(str(tmp_path), "p")
  assert ("p.b", 1) in g["p.a"] and ("p.c", 2) in g["p.b"]      # `from p import b` is the module p.b
  assert circles(g) == [["p.a", "p.b", "p.c"]]                   # p.d only points in: not part of it


def test_checker_finds_an_arrow_up_and_an_experiment(tmp_path):
  write(tmp_path, {"p/__init__.py": "", "p/low/__init__.py": "", "p/low/x.py": "def f():\n  from p.high import y\n",
                   "p/high/__init__.py": "from p.low import x\n", "p/high/y.py": "import experiments.foo\n",
                   "p/top.py": "from p.high import y\n"})
  g = graph(str(tmp_path), "p")
  floors = ("p.low", "p.high", "p.top")
  assert upward(g, floors) == [
      "p.high.y -> experiments.foo (line 1): the library never imports an experiment",
      "p.low.x -> p.high.y (line 2): an arrow up from p.low to p.high"]
  assert circles(g) == []
  with pytest.raises(AssertionError, match="p.low.x is on no floor"):
    upward(g, floors[1:])


# ----------------------------------------------------------------------------------------------------------------
# The house.
def test_jcnn_has_no_import_circles():
  assert circles(graph(ROOT, "jcnn")) == []


def test_jcnn_arrows_point_down_and_never_to_experiments():
  assert upward(graph(ROOT, "jcnn"), FLOORS) == []


def test_nn_imports_nothing_of_jcnn_but_errors():
  g = graph(ROOT, "jcnn")
  assert {t for m, ts in g.items() if m.startswith("jcnn.nn") for t, _ in ts
          if not t.startswith("jcnn.nn")} <= {"jcnn.errors"}


def test_every_package_says_what_it_holds_and_may_import():
  for pkg in ("nn", "models", "data", "inspect", "parallel", "train", "sweep"):
    doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, "jcnn", pkg, "__init__.py")).read())) or ""
    assert "May import" in doc, f"jcnn/{pkg}/__init__.py: its docstring must say what it may import"


def test_docs_architecture_lists_the_floors_in_order():
  """docs/contributing.md's architecture table, and the README's one-line chain of floors."""
  page = open(os.path.join(ROOT, "docs", "contributing.md")).read()
  section = page[page.index("## Architecture"):]
  rows = re.findall(r"^\| `jcnn/([a-z_]+)(?:/|\.py)`", section, re.M)   # the table's first column, top floor first
  assert [f"jcnn.{r}" for r in reversed(rows)] == list(FLOORS)
  readme = open(os.path.join(ROOT, "README.md")).read()
  chain = re.search(r"`errors` → .*? → `cli`", readme, re.S).group(0)
  assert [f"jcnn.{n}" for n in re.findall(r"`(\w+)`", chain)] == list(FLOORS)


def test_launch_is_thin():
  lines = open(os.path.join(ROOT, "launch.py")).read().splitlines()
  assert len(lines) <= 80
  assert sum("cli.run(" in line for line in lines) == 1
