"""Datasets, class splits and the tf.data input pipeline."""
