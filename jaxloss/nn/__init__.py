"""Flax NNX building blocks that some losses are designed for."""

from jaxloss.nn._cosine import CosineClassifier as CosineClassifier
