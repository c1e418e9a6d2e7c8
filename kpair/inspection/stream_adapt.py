"""Normalization statistics adapted while a domain's images stream in
(`kpair predict --adapt N`).

`kpair.inspection.adapt.adapt_model` adapts a domain from images read
beforehand. Here the images arrive in batches, the batches that are
predicted: before a batch is predicted, the statistics of each adapted
domain are estimated from every image of that domain seen so far, that
batch's included, and blended with the statistics the model held at the
start, which weigh as `prior` images against the `n` seen (Schneider et
al., NeurIPS 2020; `kpair.inspection.adapt.blend_statistics`). The first
batch is thus predicted with statistics from its own images only, blended
with the stored ones; the last with statistics from all of them.

Each estimate is exact, not a running average: it is
`kpair.inspection.adapt.statistics_estimator`'s over all the images seen,
which blends with the statistics the model held when the estimator was
made. After the last batch the model holds what
`adapt_model(model, images, domain, prior=prior)` gives over the same
images. After `max_images` images of a domain its statistics stay fixed.

An image is counted once however many pairs show it, when the caller
names it by a key (its file path).
"""

import numpy as np

from kpair.errors import ConfigError
from kpair.inspection.adapt import (
    DEFAULT_MAX_IMAGES,
    check_prior,
    statistics_estimator,
)
from kpair.inspection.domain_tables import PER_DOMAIN, add_domain, check_domain
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.utils.validation import positive_int


class StreamAdapter:
    """Adapts domains' statistics batch after batch (see the module).

    Args:
        model: A kpair pair model (as `adapt_model` takes). Adapted in place,
            unless a new domain is added: then `self.model` is a copy with one
            more domain, and `model` stays as it was.
        prior: N >= 0, the images the stored statistics weigh as (0 or None:
            each estimate replaces them).
        domains: The domain ids to adapt, at least one. A model with one set
            of statistics (batch norm, renorm, eval-mode) takes one domain
            only: its statistics then serve every domain. For a per-domain
            model, the id `num_domains` adds a domain, which starts from
            domain `like`'s affine parameters and statistics.
        like: For a new domain: the domain it starts from (default 0; needed
            with a positive prior, as in `adapt_model`).
        max_images: Images per domain after which its statistics stay fixed.
        batch_size: Images per forward pass of an estimate; the statistics do
            not depend on it.
    """

    def __init__(self, model, prior, domains, like=None,
                 max_images=DEFAULT_MAX_IMAGES, batch_size=64):
        self.prior = check_prior(prior)
        domains = sorted({_domain_id(d) for d in domains})
        if not domains:
            raise ConfigError("`domains` must name at least one domain to adapt.")
        num_domains = check_domain(model, domains[0])
        new = num_domains is not None and num_domains in domains
        if like is not None and not new:
            known = ("keeps no statistics per domain" if num_domains is None
                     else f"has domains 0..{num_domains - 1}")
            raise ConfigError(
                f"like={like!r} names the domain a new domain starts from, and "
                f"no domain to adapt is new: the model {known}. "
                f"Received: like={like!r}, domains={domains}"
            )
        for domain in domains:
            check_domain(model, domain, like if domain == num_domains else None)
            check_prior(prior, num_domains, domain, like)
        norms = [layer for _, layer in stateful_norm_layers(model)]
        if len(domains) > 1 and any(not isinstance(n, PER_DOMAIN) for n in norms):
            raise ConfigError(
                "This model keeps one set of statistics for every domain "
                "(batch norm): it can be adapted to one domain only, whose "
                f"statistics then serve all. Received: domains={domains}"
            )
        self.max_images = positive_int("max_images", max_images)
        self.batch_size = positive_int("batch_size", batch_size)
        self.domains = tuple(domains)
        self.added = num_domains if new else None
        self.like = (0 if like is None else like) if new else None
        self.model = add_domain(model, like) if new else model
        self._estimate = statistics_estimator(self.model)
        self._images = {d: [] for d in domains}
        self._keys = {d: set() for d in domains}
        self._counts = dict.fromkeys(domains, 0)

    def update(self, images, domains, keys=None):
        """Takes one batch's images and re-estimates the domains they add to.

        Args:
            images: Float array `(k, height, width, 3)`, as the model's
                reader produces them (both sides of a batch of pairs).
            domains: Integer array `(k,)`, each image's domain id.
            keys: Optional `k` hashable names of the images (file paths): an
                image whose key was seen is not counted again.

        Returns:
            `{domain: images it now has}` for each domain re-estimated (the
            ones this batch brought new images of, below `max_images`).
        """
        images = np.asarray(images)
        domains = np.asarray(domains).reshape(-1)
        if len(images) != len(domains) or (keys is not None
                                           and len(keys) != len(domains)):
            raise ValueError(
                "`images`, `domains` and `keys` must have one entry per image. "
                f"Received: {len(images)} images, {len(domains)} domains"
                + ("" if keys is None else f", {len(keys)} keys")
            )
        changed = {}
        for domain in self.domains:
            room = self.max_images - self._counts[domain]
            if room <= 0:
                continue
            taken = []
            for index in np.flatnonzero(domains == domain):
                if keys is not None:
                    if keys[index] in self._keys[domain]:
                        continue
                    self._keys[domain].add(keys[index])
                taken.append(index)
                if len(taken) == room:
                    break
            if not taken:
                continue
            self._images[domain].append(images[taken])
            self._counts[domain] += len(taken)
            self._estimate(self.images(domain), domain, self.batch_size,
                           prior=self.prior)
            changed[domain] = self._counts[domain]
        return changed

    def images(self, domain):
        """Every image of `domain` the statistics are estimated from, in the
        order seen; None before the first."""
        found = self._images[domain]
        if not found:
            return None
        if len(found) > 1:
            self._images[domain] = found = [np.concatenate(found)]
        return found[0]

    @property
    def counts(self):
        """`{domain: images}` the statistics of each domain come from."""
        return dict(self._counts)


def _domain_id(domain):
    if isinstance(domain, bool) or not isinstance(domain, (int, np.integer)):
        raise ConfigError(
            f"Domain ids must be integers. Received: domain={domain!r}"
        )
    return int(domain)
