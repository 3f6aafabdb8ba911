"""Configuration, the suite expansion, paths, typed jobs and file I/O (no torch)."""
