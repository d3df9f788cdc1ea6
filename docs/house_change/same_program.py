"""Do two jcnn checkouts build the same programs? Prints a hash of the jaxpr of the one loop's init, step and
evaluation (the Keras convnet on synthetic data) and of a 4-variant sweep group's step (strategy 'map').

  python docs/house_change/same_program.py OLD_CHECKOUT     # e.g. a `git worktree add` of the commit before a change
  python docs/house_change/same_program.py .

Equal hashes: the two trace the same operations in the same order, so XLA compiles the same program and the speed
cannot differ but by noise. Works on the flat layout (jcnn.loop, before the packages) and on the packaged one.
"""
import hashlib
import sys

sys.path.insert(0, sys.argv[1])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments import fashion_convnet  # noqa: E402
from jcnn import data as data_lib, sweep  # noqa: E402

try:
  from jcnn.train import program as programs  # noqa: E402
except ImportError:   # the flat layout
  from jcnn import loop as programs  # noqa: E402

c = fashion_convnet.get_config()
c.data.name, c.data.synthetic_size, c.train.batch_size = "synthetic", (256, 64), 64
ds = data_lib.load(c.data)
p = programs.single_program(c, ds)
rs = p.init()
idx, mask = (jnp.asarray(a) for a in data_lib.eval_batches(64, 32))
s = sweep.default_sweep()
s.seeds, s.dropout_rate = 2, (0.0, 0.5)
g = sweep.program(sweep.make_group_fns(c, ds, ["dropout_rate"], "map"), ds, sweep.variants_of(c, s))
jaxprs = {"init": jax.make_jaxpr(p.init)(), "step": jax.make_jaxpr(p.step)(rs, p.batches(1)),
          "evaluate": jax.make_jaxpr(lambda st: p.evaluate(st, ds.test_x, ds.test_y, idx, mask))(rs.train),
          "sweep step": jax.make_jaxpr(g.step)(g.init(), g.batches(1))}
for name, jaxpr in jaxprs.items():
  print(f"{name:<11} {hashlib.sha256(str(jaxpr).encode()).hexdigest()[:16]}  ({len(str(jaxpr))} characters)")
