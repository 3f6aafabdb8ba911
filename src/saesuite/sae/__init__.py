"""Dictionaries and their training: the module, dense/sparse steps, latent sharding,
the trainer and its launcher."""
