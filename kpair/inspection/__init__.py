"""A model and arrays in, figures out: norm statistics, evaluation, diagnose,
adapt, the adapt curve, unknown domains, check. Never a path."""
