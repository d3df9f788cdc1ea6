"""The README's research-code example runs as printed (on synthetic data, so it needs no dataset) and learns."""
import contextlib
import io
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_research_example_runs_and_learns():
  readme = open(os.path.join(ROOT, "README.md")).read()
  blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
  example = next(b for b in blocks if "make_train_step" in b)
  code = example.replace('"fashion_mnist", "train_limit": 6000', '"synthetic"')
  assert code != example
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
  result = eval(out.getvalue().strip().splitlines()[-1])  # pylint: disable=eval-used
  assert result["count"] == 512 and result["accuracy"] > 0.5   # 10 classes: chance is 0.1
