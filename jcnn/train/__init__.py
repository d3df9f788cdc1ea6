"""Training: the step, the program, the one loop, and what a run leaves on disk.

  optim        optimizers and schedules by name; learning rate and weight decay as arrays in the optimizer state
  step         losses, TrainState, the pure train and eval steps (chunks on CPU, mixed precision), evaluate
  program      a run's per-model functions (init / step / evaluate / batches) bound into a Program
  loop         the one loop over a Program: restore or init, steps, evaluation, writers, checkpoints, stop signals
  decide       early stopping, reduce-on-plateau and the best checkpoint: a run's decisions on its epoch rows
  checkpoint   orbax save / restore / resume, and a trained run's model for inference
  workdir      a run's folder: new, resumed or refused; held by one process at a time; config.json
  writers      progress line, metrics.jsonl, TensorBoard, final files; plots draws their PNGs

May import: jcnn.config, errors, nn, models, data, parallel. The sequence that drives a run from its config is
jcnn.experiment.train_and_evaluate, above this package.
"""
from jcnn.train.optim import learning_rate_of, make_optimizer, set_hyperparam
from jcnn.train.step import (LOSS_SCALE_PERIOD, MICRO_BATCH_CPU, LossScale, TrainState, eval_epoch, evaluate,
                             init_state, l2_penalty, make_eval_step, make_train_step, micro_batch_size, per_example_loss,
                             summarize, take, update_loss_scale, zero_metrics)

__all__ = ["learning_rate_of", "make_optimizer", "set_hyperparam", "LOSS_SCALE_PERIOD",
           "MICRO_BATCH_CPU", "LossScale", "TrainState", "eval_epoch", "evaluate", "init_state", "l2_penalty", "make_eval_step",
           "make_train_step", "micro_batch_size", "per_example_loss", "summarize", "take", "update_loss_scale",
           "zero_metrics"]
