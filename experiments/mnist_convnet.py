"""The Keras MNIST convnet on MNIST (Chollet, "Deep Learning with Python", 5.1). Downloads MNIST via TFDS.

  python launch.py --experiment=mnist_convnet

Expected: ~99.2% test accuracy after 5 epochs. Offline, put MNIST's IDX files in $JCNN_DATA_DIR/mnist.
"""
from experiments import fashion_convnet


def get_config():
  c = fashion_convnet.get_config()
  c.name = "mnist_convnet"
  c.description = "Keras MNIST convnet on MNIST (TFDS download); ~99.2% test accuracy in 5 epochs"
  c.data.name = "mnist"
  return c
