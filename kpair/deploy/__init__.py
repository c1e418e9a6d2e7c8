"""Deployment: export a SavedModel, fold normalization, predict a CSV."""
