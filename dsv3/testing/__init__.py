"""Helpers for tests and demos: random-weight checkpoints written in the real on-disk layouts."""
