"""A model and arrays in, figures out: norm statistics, evaluate, diagnose,
adapt, the adapt curve, domain images and tables, unknown domains, check.
Never a path."""
