"""What the test_meta_frameworks.py files of several levels (unit, store) share."""

import pytest

SECRET = "hf_not_a_real_token"


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory):
    """A finished Trainer run: checkpoint-2 and checkpoint-4, and in the output directory
    the final model, trainer_state.json and the result files."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = str(tmp_path_factory.mktemp("trainer") / "out")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=37,
                                     max_position_embeddings=16)
    model = transformers.BertForSequenceClassification(config)
    rows = [{"input_ids": torch.randint(0, 100, (8,)), "labels": torch.tensor(i % 2)}
            for i in range(16)]
    args = transformers.TrainingArguments(
        output_dir=out, max_steps=4, save_steps=2, eval_strategy="steps", eval_steps=2,
        logging_steps=1, per_device_train_batch_size=4, learning_rate=3e-4, seed=7,
        data_seed=11, lr_scheduler_type="cosine", report_to=[], use_cpu=True,
        hub_token=SECRET, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows,
                                   eval_dataset=rows[:8])
    train = trainer.train()
    trainer.save_model()
    trainer.save_state()
    trainer.save_metrics("train", train.metrics)
    trainer.save_metrics("eval", trainer.evaluate())
    return out, args
