"""`best_by`: the metric a training job chose its best checkpoint by, as its framework
recorded it in the checkpoint. A run whose project names no primary metric (`ckptfs
config set STORE P primary_metric=… mode=…`) gets its `best` alias from the newest
checkpoint's `best_by` (docs/sidecar.md, "Tags, stages and aliases").

- Hugging Face Trainer: `metric_for_best_model` and `greater_is_better` of its
  TrainingArguments (lineage.hyperparameters, from training_args.bin). As the Trainer
  does: it compares the evaluation's metric, `eval_<name>` unless the name has that
  prefix, and without `greater_is_better` a higher value is better unless the name ends
  in "loss".
- Lightning: the monitor and mode of the checkpoint's first ModelCheckpoint callback
  that monitors something (extracted.lightning).
"""
MODES = ("min", "max")


def best_by(lineage: dict, extracted: dict) -> dict | None:
    """{"metric", "mode", "source"}, or None when the job named no metric."""
    return trainer_choice(lineage.get("hyperparameters") or {}) or \
        lightning_choice(extracted.get("lightning") or {})


def trainer_choice(hyperparameters: dict) -> dict | None:
    metric = hyperparameters.get("metric_for_best_model")
    if not isinstance(metric, str) or not metric.strip():
        return None
    if not metric.startswith("eval_"):
        metric = f"eval_{metric}"
    greater = hyperparameters.get("greater_is_better")
    if not isinstance(greater, bool):
        greater = not metric.endswith("loss")
    return {"metric": metric, "mode": "max" if greater else "min",
            "source": "TrainingArguments.metric_for_best_model"}


def lightning_choice(summary: dict) -> dict | None:
    monitor, mode = summary.get("monitor"), summary.get("mode")
    if not isinstance(monitor, str) or not monitor or mode not in MODES:
        return None
    return {"metric": monitor, "mode": mode, "source": "ModelCheckpoint.monitor"}
