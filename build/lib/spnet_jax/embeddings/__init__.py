"""Class embeddings: matrices from word-vector files or attributes."""
