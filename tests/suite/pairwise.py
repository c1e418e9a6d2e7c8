"""An all-pairs (pairwise) covering: rows of choices, one per dimension,
such that every two choices of any two dimensions meet in some row.

Every pair of options is tried together, at a fraction of the full product
(5 x 4 x 2 x 3 x 2 x 3 = 720 combinations; 21 rows cover their pairs).
Greedy and deterministic (AETG, Cohen et al. 1997, without its randomness):
each row is the combination that covers the most pairs not yet covered,
the first such in product order.
"""

import itertools


def uncovered_pairs(dimensions, rows=()):
    """The pairs `((dim, choice), (dim, choice))` that no row of `rows`
    holds. `dimensions` maps each name to its choices; a row maps each name
    to one choice."""
    names = list(dimensions)
    pairs = {
        ((a, x), (b, y))
        for a, b in itertools.combinations(names, 2)
        for x in dimensions[a] for y in dimensions[b]
    }
    for row in rows:
        pairs -= _pairs_of(row, names)
    return pairs


def all_pairs(dimensions):
    """Rows (dicts name -> choice) that cover every pair of `dimensions`."""
    names = list(dimensions)
    left = uncovered_pairs(dimensions)
    candidates = [dict(zip(names, combination))
                  for combination in itertools.product(*dimensions.values())]
    rows = []
    while left:
        best = max(candidates, key=lambda row: len(_pairs_of(row, names) & left))
        rows.append(best)
        left -= _pairs_of(best, names)
    return rows


def _pairs_of(row, names):
    return {((a, row[a]), (b, row[b])) for a, b in itertools.combinations(names, 2)}
