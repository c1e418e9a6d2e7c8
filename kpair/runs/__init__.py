"""The path level: open a run or a model file, evaluate a run, adapt a file,
the domain weights of a run, reports."""
