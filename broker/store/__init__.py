"""Durability: the write-ahead log and what is built on it."""
