"""Images of each domain, read from a data set of pairs (either side of a
pair): what `kpair diagnose` measures the norms on, and what `kpair adapt`
estimates a domain's statistics from.
"""

import numpy as np


def domain_images(dataset, domain, limit):
    """Up to `limit` images of one domain, from either side of the pairs."""
    return images_by_domain(dataset, (domain,), limit).get(domain)


def images_by_domain(dataset, domains, limit):
    """`{domain: images}`, up to `limit` images of each domain, in one pass.

    A domain without images in `dataset` is left out.
    """
    found = {domain: [] for domain in domains}
    for features, _ in dataset:
        for side in ("left", "right"):
            images = found.get(int(features[f"{side}_domain"]))
            if images is not None and len(images) < limit:
                images.append(features[side].numpy())
        if all(len(images) >= limit for images in found.values()):
            break
    return {d: np.stack(images) for d, images in found.items() if images}
