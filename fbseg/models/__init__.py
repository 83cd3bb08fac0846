"""The networks: weights, CLIP loading and its image tower, proxies, position tables, and
class-name text embeddings."""
