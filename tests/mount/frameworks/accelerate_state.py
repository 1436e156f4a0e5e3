"""A plain PyTorch loop under accelerate, saving its whole state with
`accelerator.save_state`: either to a directory it names (`--naming explicit`:
OUT/step_<n>) or with `ProjectConfiguration(automatic_checkpoint_naming=True,
total_limit=2)` (`--naming auto`: OUT/checkpoints/checkpoint_<i>, the oldest deleted);
`--resume-from DIR` restores one with `accelerator.load_state(DIR)` and trains on.

Each step's batch comes from a generator seeded with the step, so a resumed run sees the
same data as an uninterrupted one and ends with the same weights.

  accelerate_state.py --output-dir OUT --report R.json [--steps 8] [--save-every 2]
      [--naming auto|explicit] [--resume-from DIR]
"""
import argparse
import os
import sys

from common import deterministic, features, hash_tree, state_sha256, write_report

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import ProjectConfiguration  # noqa: E402


def batch(step: int):
    x = features(1000 + step, 16)
    return x, x.sum(dim=1, keepdim=True) * 0.5


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--naming", choices=["auto", "explicit"], default="auto")
    parser.add_argument("--resume-from")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    deterministic(args.seed)

    project = ProjectConfiguration(project_dir=args.output_dir,
                                   automatic_checkpoint_naming=args.naming == "auto",
                                   total_limit=2 if args.naming == "auto" else None)
    accelerator = Accelerator(cpu=True, project_config=project)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    report = {"saved": {}}
    if args.resume_from:
        accelerator.load_state(args.resume_from)
        report["resumed_from"] = args.resume_from
    start = accelerator.step  # restored by load_state: the steps already trained
    report["first_step"] = start + 1

    for step in range(start + 1, args.steps + 1):
        with accelerator.accumulate(model):
            x, y = batch(step)
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if step % args.save_every == 0:
            if args.naming == "auto":
                where = accelerator.save_state()
            else:
                where = accelerator.save_state(os.path.join(args.output_dir, f"step_{step}"))
            name = os.path.relpath(where, args.output_dir)
            report["saved"][name] = {"step": step, "files": hash_tree(where)}

    report["final_state_sha256"] = state_sha256(accelerator.unwrap_model(model).state_dict())
    report["steps"] = accelerator.step
    write_report(args.report, report)


if __name__ == "__main__":
    sys.exit(main())
