"""The rules that turn what a training job writes into versions (meta/layout.py), on the
layouts real frameworks write."""
from ckptfs.meta.layout import (CHECKPOINT, DIR, FILE, FILES, GROUP, classify,
                                free_version_name, looks_like_job_output, unit_of, usable_name)


def tree(*paths: str) -> dict[str, str]:
    """{path: kind} from paths; a trailing '/' makes a directory, parents are added."""
    entries = {}
    for path in paths:
        is_dir = path.endswith("/")
        path = path.rstrip("/")
        parts = path.split("/")
        for i in range(1, len(parts)):
            entries["/".join(parts[:i])] = "dir"
        entries[path] = "dir" if is_dir else "file"
    return entries


def shapes(units) -> dict[str, tuple]:
    return {u.path: (u.shape, u.kind, u.name_hint) for u in units}


TRAINER_CHECKPOINT = ["model.safetensors", "config.json", "generation_config.json",
                      "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                      "training_args.bin"]


def test_trainer_output_dir_with_checkpoints_logs_and_the_final_model():
    units = classify(tree(*[f"checkpoint-{s}/{f}" for s in (5, 10) for f in TRAINER_CHECKPOINT],
                          "runs/Dec03_10-00-00_host/events.out.tfevents.1.host.1.0",
                          "model.safetensors", "config.json", "training_args.bin",
                          "trainer_state.json", "all_results.json", "eval_results.json",
                          "README.md"))
    assert shapes(units) == {
        "": (GROUP, CHECKPOINT, "final"),
        "checkpoint-10": (DIR, CHECKPOINT, "checkpoint-10"),
        "checkpoint-5": (DIR, CHECKPOINT, "checkpoint-5"),
        "runs": (GROUP, FILES, "runs"),
    }
    loose = next(u for u in units if u.path == "")
    assert "all_results.json" in loose.members and "README.md" in loose.members
    assert unit_of(units, "checkpoint-5/optimizer.pt").path == "checkpoint-5"


def test_lightning_top_k_files_and_logs():
    units = classify(tree("epoch=0-step=10.ckpt", "epoch=1-step=20.ckpt", "last.ckpt",
                          "lightning_logs/version_0/hparams.yaml",
                          "lightning_logs/version_0/metrics.csv",
                          "lightning_logs/version_0/checkpoints/epoch=2-step=30.ckpt"))
    assert shapes(units) == {
        "epoch=0-step=10.ckpt": (FILE, CHECKPOINT, "epoch=0-step=10"),
        "epoch=1-step=20.ckpt": (FILE, CHECKPOINT, "epoch=1-step=20"),
        "last.ckpt": (FILE, CHECKPOINT, "last"),
        "lightning_logs": (GROUP, FILES, "lightning_logs"),
        "lightning_logs/version_0/checkpoints/epoch=2-step=30.ckpt": (FILE, CHECKPOINT,
                                                                      "epoch=2-step=30"),
    }


def test_accelerate_explicit_and_automatic_naming():
    parts = ["model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"]
    units = classify(tree(*[f"step_5/{p}" for p in parts],
                          *[f"checkpoints/checkpoint_{i}/{p}" for i in (0, 1) for p in parts]))
    assert shapes(units) == {
        "checkpoints/checkpoint_0": (DIR, CHECKPOINT, "checkpoint_0"),
        "checkpoints/checkpoint_1": (DIR, CHECKPOINT, "checkpoint_1"),
        "step_5": (DIR, CHECKPOINT, "step_5"),
    }


def test_a_folder_of_numbered_files_holds_one_checkpoint_per_file():
    units = classify(tree("ckpts/model_5.pt", "ckpts/model_10.pt", "ckpts/notes.txt", "ckpts/old/"))
    assert shapes(units) == {
        "ckpts": (GROUP, FILES, "ckpts"),
        "ckpts/model_10.pt": (FILE, CHECKPOINT, "model_10"),
        "ckpts/model_5.pt": (FILE, CHECKPOINT, "model_5"),
    }
    # An empty directory is no unit at all: nothing to archive yet.
    assert classify(tree("ckpts/", "runs/")) == []


def test_custom_checkpoint_directories_copied_in():
    units = classify(tree("step-100/weights.pt", "step-100/optim.pt", "step-100/meta.yaml",
                          "v2/model.pt", "v2/config.json",
                          "v3/model.pt", "v3/.seal",
                          "deepspeed/trainer_state.json", "deepspeed/global_step10/mp_rank_00_model_states.pt",
                          "notes/"))
    assert shapes(units) == {
        "deepspeed": (DIR, CHECKPOINT, "deepspeed"),
        "step-100": (DIR, CHECKPOINT, "step-100"),
        "v2": (DIR, CHECKPOINT, "v2"),
        "v3": (DIR, CHECKPOINT, "v3"),
    }
    deepspeed = next(u for u in units if u.path == "deepspeed")
    assert "deepspeed/global_step10/mp_rank_00_model_states.pt" in deepspeed.members


def test_loose_files_without_a_model_are_files():
    units = classify(tree("all_results.json", "config.yaml", "model_5.pt"))
    assert shapes(units) == {"": (GROUP, FILES, "files"),
                             "model_5.pt": (FILE, CHECKPOINT, "model_5")}


def test_version_names_are_made_valid_and_never_reused():
    taken = {"last", "last~2", "checkpoint-5"}
    assert free_version_name("last", taken.__contains__) == "last~3"
    assert free_version_name("checkpoint-10", taken.__contains__) == "checkpoint-10"
    assert free_version_name("latest", taken.__contains__) == "latest~2"
    assert free_version_name("best", taken.__contains__) == "best~2"
    assert usable_name("x.json") == "x.json_"
    assert usable_name("a\x01b") == "a_b"
    assert usable_name("..") == "checkpoint"


def test_what_a_job_writes_inside_its_run_directory_is_recognised():
    for name in ("checkpoint-500", "checkpoint_3", "checkpoints", "runs", "logs",
                 "lightning_logs", "wandb", "epoch=0-step=10.ckpt", "model.safetensors",
                 "step_100", "global_step20"):
        assert looks_like_job_output(name), name
    for name in ("bert", "run-42", "minilm", "full-ft", "exp1", "2026-12-03"):
        assert not looks_like_job_output(name), name
