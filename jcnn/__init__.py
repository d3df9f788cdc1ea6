"""jcnn: pure-function Flax CNNs, vmapped ablation sweeps, classic course material. See README.md and docs/.

Packages by concern, each importing only the floors below it (docs/contributing.md "Architecture"; tests/test_structure.py),
bottom first: errors, nn, models, config, data, parallel, train, inspect, sweep, experiment, export, cli.
Research code imports what it needs in one line, e.g. `from jcnn import data, models, nn as jnn, train`.
"""
__version__ = "0.1.0"
