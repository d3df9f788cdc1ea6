"""TextCNN (Kim 2014, CNN-rand) on IMDB movie-review sentiment (TFDS imdb_reviews; 25k train / 25k test reviews).

  python launch.py --experiment=textcnn_imdb
  python launch.py --experiment=textcnn_imdb --config.data.vocab_size=30000    # the model follows (a reference)

Reviews are lower-cased, split into words, cut or zero-padded to 400 tokens; the 20,000 most frequent training words
get ids (1 = unknown, 0 = padding). 128-d learned embeddings, 100 filters each of windows 3/4/5, ReLU, max over time,
dropout 0.5, Adam lr 1e-3, batch 50, 5 epochs. Expected: ~88% test accuracy. Needs the dataset in the TFDS cache
(~/tensorflow_datasets): offline without it, the run stops with a one-line DataError saying how to get it.
"""
import ml_collections

from experiments import fashion_convnet


def get_config():
  c = fashion_convnet.get_config()
  c.name = "textcnn_imdb"
  c.description = "TextCNN (Kim 2014) on IMDB reviews (TFDS); ~88% test accuracy in 5 epochs"
  vocab = ml_collections.FieldReference(20000)   # shared: the embedding table must match the tokeniser
  c.model = ml_collections.ConfigDict(dict(name="textcnn", vocab_size=vocab, embed_dim=128, num_filters=100,
                                           activation="relu", dropout_rate=0.5, init_scale=1.0))
  c.data.name = "imdb_reviews"
  c.data.vocab_size = vocab
  c.data.max_len = 400          # tokens per review (cut or zero-padded)
  c.data.preprocess = "none"
  c.train.epochs = 5
  c.train.batch_size = 50
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  return c
