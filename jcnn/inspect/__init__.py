"""Looking inside a model: functions of a model and its variables, and the figures they draw.

  summary      the layer table: shapes, parameters, FLOPs, jump and receptive field (rules over the jaxpr)
  visualize    layer outputs, feature maps, first-layer filters, activation maximisation, saliency
  retrieval    penultimate-layer embeddings, blocked cosine top-k, precision@k / recall@k
  gradflow     deep plain / residual stacks and per-layer gradient norms over training (the gradient-flow study)
  figures      image grids and gradient-flow curves as PNG files
  cli          `python -m jcnn.inspect <capability>`: a trained run's model (or a quickly trained convnet) through
               the functions above, drawn as PNG and JSON files

May import: jcnn.train (a trained run's variables; the quick convnet's steps), parallel, data, config, models, nn,
errors. Sweeps size their programs with `summary`; jcnn.experiment prints it.
"""
