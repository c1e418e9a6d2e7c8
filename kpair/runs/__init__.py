"""The path level: model files, open a run for evaluation, and each
command's work on a run or model file (evaluate, diagnose, adapt, the adapt
curve), the domain weights of a run."""
