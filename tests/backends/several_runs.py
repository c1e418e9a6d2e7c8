"""`kpair ARGS [+ ARGS ...]`: several kpair commands in one process.

Usage: python -m tests.backends.several_runs ARGS [+ ARGS ...]
Each group of ARGS (groups separated by `+`) is one `kpair` command, run in
turn in this process, which starts the backend once for all of them (its
imports, and on JAX the small programs of Keras's eager steps and the model
check's predictions, compiled once); a group that begins with `one-ulp`
trains from weights one ulp away (tests/backends/one_ulp.py). The first
command that fails ends the process with its status. `import kpair` loads
Keras on `KERAS_BACKEND` first: a `--backend` flag cannot switch it here.
"""

import sys

from kpair.cli import main
from tests.backends.one_ulp import one_ulp_away


def commands(args):
    """The `+`-separated groups of `args`."""
    groups = [[]]
    for arg in args:
        if arg == "+":
            groups.append([])
        else:
            groups[-1].append(arg)
    return groups


def run_all(args):
    """Runs each command of `args` in turn; the first nonzero status, or 0."""
    for command in commands(args):
        if command[0] == "one-ulp":
            with one_ulp_away():
                status = main(command[1:])
        else:
            status = main(command)
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(run_all(sys.argv[1:]))
