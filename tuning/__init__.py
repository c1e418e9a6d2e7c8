"""keras-tuner search over kpair models (imports kpair and layers)."""
