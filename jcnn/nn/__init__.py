"""Building blocks a researcher imports into their own linen code: plain modules and functions, parameters as plain
pytrees, no hidden state.

  layers    activations (by name or traced index), Dropout / GaussianNoise with traced rates, Conv (per-backend
            lowering), ConvTranspose, Dense, pooling, Flatten, initialisers with init_scale
  blocks    ConvBlock, BasicBlock / Bottleneck, PreActConv, DenseBlock + Transition, InceptionBlock, VGGBlock
  norm      BatchNorm with a one-pass VJP, optionally fused with the next ReLU
  kernels   fixed 3x3 kernels (Sobel, blur, ...) and a frozen, parameter-free convolution
  onednn    the CPU convolution through oneDNN as a jax.ffi custom call (forward, both gradients), compiled on first use
  measured  choices measured once per machine and cached as JSON (conv lowering per shape, CPU chunk size)

May import: jcnn.errors only (the bottom of the house).
"""
from jcnn.nn import blocks, kernels, layers, measured, norm, onednn
from jcnn.nn.blocks import (BasicBlock, Bottleneck, ConvBlock, DenseBlock, InceptionBlock, PreActConv, Transition,
                            VGGBlock)
from jcnn.nn.kernels import FixedConv
from jcnn.nn.layers import (ACTIVATIONS, Activation, AvgPool, Conv, ConvTranspose, Dense, Dropout, Flatten,
                            GaussianNoise, MaxPool, activation, activation_index, avg_pool, conv_output_size,
                            global_avg_pool, max_pool, scaled)
from jcnn.nn.norm import BatchNorm

__all__ = ["blocks", "kernels", "layers", "measured", "norm", "onednn", "BasicBlock", "Bottleneck", "ConvBlock", "DenseBlock",
           "InceptionBlock", "PreActConv", "Transition", "VGGBlock", "FixedConv", "ACTIVATIONS", "Activation",
           "AvgPool", "Conv", "ConvTranspose", "Dense", "Dropout", "Flatten", "GaussianNoise", "MaxPool",
           "activation", "activation_index", "avg_pool", "conv_output_size", "global_avg_pool", "max_pool", "scaled",
           "BatchNorm"]
