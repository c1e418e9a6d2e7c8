"""Each domain's weight in a pooled domain: the run's training images per
domain (`training_domain_weights`), for `kpair evaluate --domain pooled` and
`kpair predict --domain pooled`.
"""

from kpair.data import count_split
from kpair.pair_types import DOMAIN_NAMES
from kpair.runs.open_run import data_dir_for


def training_domain_weights(run, num_domains, data=None):
    """Each domain's weight for `with_pooled_domain`, and how it was found.

    Weighted by the domain's count of images in the training split (an
    A-A pair counts two images of A, an A-B pair one of each) when the
    training data is known: a run directory (its data, or the demo data
    it trained on) or `data`; otherwise equal weights.

    Args:
        run: A `kpair.runs.model_files.Run` (`kpair.runs.model_files.resolve(path)`).
        num_domains: Integer, the model's number of domains.
        data: Dataset directory the model was trained on, if not the run's.

    Returns:
        `(weights or None, source)`: None means equal weights; `source`
        says in words where the weights come from.
    """
    if data is None and run.config is None:
        return None, "equal weights (a model file outside its run directory)"
    if num_domains != len(DOMAIN_NAMES):
        return None, (f"equal weights (the split counts pairs of domains A and B "
                      f"only; the model has {num_domains} domains)")
    # The size matters only for the demo data a run without `data` used.
    size = (run.config.image_size,) * 2 if run.config is not None else None
    split = data_dir_for(run, data, size) / "train"
    counts = count_split(split)
    images = [2 * counts["A-A"] + counts["A-B"], 2 * counts["B-B"] + counts["A-B"]]
    if not sum(images):
        return None, f"equal weights ({split} holds no pairs)"
    shares = ", ".join(f"{n} {c}" for n, c in zip(DOMAIN_NAMES, images))
    return images, f"weighted by training images per domain ({shares}; {split})"
