"""jcnn: pure-function Flax CNNs, vmapped ablation sweeps, classic course material. See README.md."""
__version__ = "0.1.0"
