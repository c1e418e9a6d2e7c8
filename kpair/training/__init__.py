"""Training: `train(config)`, its callbacks, the gap probe, preflight checks,
run directories and the comparison of norms."""
