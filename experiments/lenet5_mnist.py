"""LeNet-5 (LeCun et al. 1998; 61,706 params) on MNIST padded to 32x32 (TFDS download).

  python launch.py --experiment=lenet5_mnist
  python launch.py --experiment=lenet5_mnist --config.model.pool=max --config.model.activation=relu

tanh, average-pool subsampling, Adam lr 1e-3, batch 64, 10 epochs, pixels standardised. Expected: ~99% test accuracy
(the paper's LeNet-5: 0.95% error). Offline, put MNIST's IDX files in $JCNN_DATA_DIR/mnist.
"""
import ml_collections

from experiments import fashion_convnet


def get_config():
  c = fashion_convnet.get_config()
  c.name = "lenet5_mnist"
  c.description = "LeNet-5 (61,706 params) on MNIST padded to 32x32; ~99% test accuracy in 10 epochs"
  # LeNet-5 has a `pool` field that convnet lacks: the locked config gets a new model section.
  c.model = ml_collections.ConfigDict(dict(name="lenet5", activation="tanh", dropout_rate=0.0, init_scale=1.0,
                                           pool="avg"))
  c.data.name = "mnist"
  c.data.pad = 2                # 28x28 -> 32x32, the paper's input (it also padded the digits into a 32x32 field)
  c.data.preprocess = "standardize"
  c.train.epochs = 10
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  return c
