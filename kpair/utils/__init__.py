"""Shared helpers: whole-file writes, progress, tables, TensorFlow set-up."""
