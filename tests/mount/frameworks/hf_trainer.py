"""A transformers Trainer job as a user writes it: a tiny BERT regressor built from a config
(no hub), synthetic data, checkpoints every 2 steps with rotation (save_total_limit=2),
evaluation every 2 steps, the best model loaded at the end, TensorBoard logs (runs/), and
the ending of the transformers examples (save_model, log/save_metrics, save_state).

The evaluation targets are half the training targets, so the evaluation loss falls while
the model's outputs climb towards them and rises after: the best checkpoint is not the
last one.

  hf_trainer.py --output-dir OUT --report R.json [--max-steps 12]
      [--resume-from-checkpoint true|PATH]   # Trainer.train(resume_from_checkpoint=…)
      [--init-from PATH]                     # fine-tune: from_pretrained(PATH)
      [--stop-after-step N]                  # preempted: exits at once after checkpoint-N
"""
import argparse
import os
import sys

from common import deterministic, hash_tree, sha256_file, state_sha256, write_report

import torch  # noqa: E402  (after common: it sets the thread and offline variables)
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, Trainer,
    TrainerCallback, TrainingArguments)

PREEMPTED = 75  # the exit status of a job stopped on purpose (EX_TEMPFAIL)


def dataset(n: int, target: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 32, (n, 8), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": torch.tensor(target)} for i in range(n)]


def tiny_bert() -> BertForSequenceClassification:
    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16, num_labels=1, problem_type="regression",
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


class Record(TrainerCallback):
    """Facts for the report: each checkpoint's files as saved (before any rotation), the
    evaluations during training, the first step this process trained, the preemption."""

    def __init__(self, report: dict, stop_after: int | None, report_path: str):
        self.report, self.stop_after, self.report_path = report, stop_after, report_path

    def on_step_begin(self, args, state, control, **kw):
        self.report.setdefault("first_step", state.global_step + 1)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if not self.report.get("train_ended"):  # not the evaluate() after training
            self.report["evaluations"].append([state.global_step, metrics["eval_loss"]])

    def on_train_end(self, args, state, control, **kw):
        self.report["train_ended"] = True

    def on_save(self, args, state, control, **kw):
        name = f"checkpoint-{state.global_step}"
        self.report["checkpoints"][name] = hash_tree(os.path.join(args.output_dir, name))
        if state.global_step == self.stop_after:
            self.report["stopped_after"] = state.global_step
            write_report(self.report_path, self.report)
            os._exit(PREEMPTED)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--resume-from-checkpoint")
    parser.add_argument("--init-from")
    parser.add_argument("--stop-after-step", type=int)
    args = parser.parse_args()
    deterministic(args.seed)
    report = {"checkpoints": {}, "evaluations": []}

    if args.init_from:
        model = AutoModelForSequenceClassification.from_pretrained(args.init_from)
        report["init_state_sha256"] = state_sha256(model.state_dict())
    else:
        model = tiny_bert()

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        report_to="tensorboard",
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args,
                      train_dataset=dataset(16, 2.0, seed=1),
                      eval_dataset=dataset(8, 1.0, seed=2),
                      callbacks=[Record(report, args.stop_after_step, args.report)])

    resume = args.resume_from_checkpoint
    if resume is not None and resume.lower() == "true":
        resume = True
    train_result = trainer.train(resume_from_checkpoint=resume)

    # The ending of the transformers examples (run_glue.py & co.).
    trainer.save_model()
    metrics = train_result.metrics
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)

    state = trainer.state
    report.update(
        best_model_checkpoint=os.path.basename(state.best_model_checkpoint or ""),
        best_metric=state.best_metric,
        global_step=state.global_step,
        final_state_sha256=state_sha256(trainer.model.state_dict()),
        final_eval_loss=metrics["eval_loss"],
        loose_files={name: sha256_file(os.path.join(args.output_dir, name))
                     for name in sorted(os.listdir(args.output_dir))
                     if os.path.isfile(os.path.join(args.output_dir, name))},
        hyperparameters={"learning_rate": args.learning_rate,
                         "per_device_train_batch_size": 4, "max_steps": args.max_steps},
        seed=args.seed,
    )
    write_report(args.report, report)


if __name__ == "__main__":
    sys.exit(main())
