"""Each domain's weight in a pooled domain: the run's training images."""

from kpair.data import count_split
from kpair.runs.domain_weights import training_domain_weights
from kpair.runs.model_files import Run


def test_pooled_weights_count_the_training_images_of_each_domain(
    demo_data, tiny_config, tmp_path
):
    counts = count_split(demo_data / "train")
    run = Run(tmp_path / "model.keras", tiny_config(demo_data, tmp_path))
    weights, source = training_domain_weights(run, 2)
    assert weights == [2 * counts["A-A"] + counts["A-B"],
                       2 * counts["B-B"] + counts["A-B"]]
    assert "training images" in source
    weights, source = training_domain_weights(
        Run(tmp_path / "m.keras", None), 2)
    assert weights is None and source.startswith("equal weights")
