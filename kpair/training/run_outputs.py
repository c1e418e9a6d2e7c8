"""What a finished run writes and says: `model.keras` and `metrics.json`,
the verdict on the training/inference gap, and the deployment check's lines.
"""

import json
import math

import keras

from kpair.inspection.check import check_model, failed
from kpair.models.model_builder import with_precision
from kpair.models.precision import resolve_precision
from kpair.pair_types import TYPE_KEYS
from kpair.training import callbacks as kcb
from kpair.training import gap
from kpair.utils import files
from kpair.utils.tensorflow_setup import onednn_enabled

BATCH_NORM_FAMILY = ("batch", "batch-renorm")

# Random pairs of the deployment check run on every model `kpair train`
# writes: a few of each pair type, a second on a full-width CPU model.
# `kpair check` takes 64.
CHECK_PAIRS = 16


def write_outputs(run_dir, config, pair_model, seconds, out, devices=1,
                   pretrained=None, precise_images=None):
    """Writes model.keras and metrics.json, prints the verdict; the metrics.

    `precise_images`: under statistics="precise", `{domain id: images}` the
    statistics were estimated from; None under "ema".
    """
    metrics = _final_metrics(run_dir, config, seconds)
    metrics["statistics"] = config.statistics
    metrics["precise_images"] = precise_images
    metrics["devices"] = devices
    # What the backbone started from (model.keras keeps how it computes).
    metrics["init"] = None if pretrained is None else pretrained.record()
    model = with_precision(pair_model, "float32")
    findings = check_model(model, pairs=CHECK_PAIRS)
    metrics["check"] = _check_status(findings)
    files.write_model(model, run_dir / "model.keras")
    files.write_json(run_dir / "metrics.json", metrics)
    print(verdict(metrics, config), file=out, flush=True)
    _print_check(findings, run_dir, out)
    return metrics


def _check_status(findings):
    """"ok", "warning" or "failure": the worst level of `kpair check`."""
    levels = {f.level for f in findings}
    if failed(findings):
        return "failure"
    return "warning" if "warning" in levels else "ok"


def _print_check(findings, run_dir, out):
    """One line when the model passes `kpair check`, else a line a finding."""
    problems = [f for f in findings if f.level not in ("ok",)]
    if not problems:
        print("kpair check: the model passes (statistics finite, every domain "
              "trained, predictions independent of the batch).", file=out)
        return
    for finding in problems:
        print(f"kpair check: {finding.line()}", file=out)
    print(f"(`kpair check {run_dir}` repeats the checks on more pairs.)",
          file=out, flush=True)


def finished_metrics(run_dir, config, epochs_done):
    """metrics.json of a run that finished all of `config`'s epochs, or None."""
    if epochs_done < config.epochs or not (run_dir / "model.keras").is_file():
        return None
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if metrics.get("epochs") == config.epochs else None


def _final_metrics(run_dir, config, seconds):
    rows = kcb.read_history(run_dir / "history.csv")
    last = rows[-1]

    def value(key):
        return float(last[key]) if last.get(key, "") != "" else float("nan")

    metrics = {"epochs": int(last["epoch"])}
    for key in (gap.TRAINING_MODE, gap.INFERENCE_MODE, "val_loss", gap.RUNNING):
        metrics[key] = value(key)
    metrics[gap.GAP] = gap.ratio(
        metrics[gap.INFERENCE_MODE], metrics[gap.TRAINING_MODE]
    )
    pairs = value("sample_pairs")
    metrics["sample_pairs"] = int(pairs) if math.isfinite(pairs) else None
    for key in TYPE_KEYS:
        for name in (gap.TRAINING_MODE, gap.INFERENCE_MODE, "val_loss", gap.RUNNING):
            metrics[f"{name}_{key}"] = value(f"{name}_{key}")
    metrics["seconds"] = round(seconds, 1)
    metrics["norm"], metrics["batching"] = config.norm, config.batching
    # The policy the run trained in ("auto" stays in config.json).
    metrics["precision"] = resolve_precision(config.precision)
    backend = keras.backend.backend()
    metrics["backend"] = backend
    # TensorFlow's CPU kernels; on JAX, XLA's compute (TensorFlow reads data).
    metrics["onednn"] = onednn_enabled() if backend == "tensorflow" else None
    return metrics


def verdict(metrics, config):
    """A plain sentence on the training/inference gap."""
    ratio = metrics[gap.GAP]
    head = (
        f"On {metrics['sample_pairs']} training pairs with the final weights: "
        f"loss {metrics[gap.TRAINING_MODE]:.4f} in training mode "
        f"({config.batching} batches, nothing updated), "
        f"{metrics[gap.INFERENCE_MODE]:.4f} in inference mode ({ratio:.2f}x); "
        f"validation {metrics['val_loss']:.4f} (inference mode)."
    )
    if not ratio <= config.gap_warning:
        if config.norm in BATCH_NORM_FAMILY and config.batching == "per-type":
            cause = (
                "Likely cause: each training batch holds one domain, so batch "
                "norm's batch statistics differ from its moving averages, which "
                "mix both domains. Fix: --norm per-domain, or --batching "
                "balanced (or mixed)."
            )
        else:
            cause = (
                "Likely cause: the normalization statistics used in inference "
                "differ from those seen in training. Run `kpair evaluate RUN "
                "--split train --mode batch-stats` to check; try --norm "
                "per-domain or --batching balanced."
            )
        return f"WARNING: the model does worse in inference mode. {head} {cause}"
    return (
        f"Done. {head} Inference mode is within {config.gap_warning}x of "
        "training mode (--gap-warning)."
    )
