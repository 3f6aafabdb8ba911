"""Data: corpus, models, sites and hooks, tokens, extraction, the activation store."""
