"""The models: backbone, pair model, losses, building from a config,
precision."""
