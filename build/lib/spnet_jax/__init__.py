"""SPNet (Semantic Projection Network) for zero- and few-label semantic segmentation in JAX."""
