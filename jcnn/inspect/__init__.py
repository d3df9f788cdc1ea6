"""Looking inside a model: functions of a model and its variables, and the figures they draw.

  summary      the layer table: shapes, parameters, FLOPs, jump and receptive field (rules over the jaxpr)
  visualize    layer outputs, feature maps, first-layer filters, activation maximisation, saliency
  retrieval    penultimate-layer embeddings, blocked cosine top-k, precision@k / recall@k
  gradflow     deep plain / residual stacks and per-layer gradient norms over training (the gradient-flow study)
  figures      image grids and gradient-flow curves as PNG files
  cli          `python -m jcnn.inspect <capability>`: an entry point (a trained run's model, or a quickly trained
               convnet, through the capabilities above)

May import: jcnn.config, errors, nn, models, data. The entry point `cli` (like jcnn.cli) sits on top and may import
anything; train and sweep use `summary` to print and size a model.
"""
