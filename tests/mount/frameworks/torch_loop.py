"""A plain PyTorch loop, the way many research scripts are: every few steps
`torch.save(model.state_dict(), f"{out}/ckpts/model_{step}.pt")` into one folder, and
`--resume` loads the newest file there (by modification time, as such scripts usually
pick it) and goes on from its step.

Plain SGD (no optimizer state to lose) and a batch drawn from a generator seeded with the
step: a resumed run ends with the same weights as an uninterrupted one.

  torch_loop.py --output-dir OUT --report R.json [--steps 8] [--save-every 2] [--resume]
"""
import argparse
import glob
import os
import re
import sys

from common import deterministic, features, sha256_file, state_sha256, write_report

import torch  # noqa: E402


def batch(step: int):
    x = features(step, 16)
    return x, torch.tanh(x[:, :1] - x[:, 1:2])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    deterministic(args.seed)

    ckpts = os.path.join(args.output_dir, "ckpts")
    os.makedirs(ckpts, exist_ok=True)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    report = {"saved": {}}
    start = 0
    if args.resume:
        newest = max(glob.glob(os.path.join(ckpts, "model_*.pt")), key=os.path.getmtime)
        model.load_state_dict(torch.load(newest, weights_only=True))
        start = int(re.search(r"model_(\d+)\.pt$", newest).group(1))
        report["resumed_from"] = os.path.relpath(newest, args.output_dir)
    report["first_step"] = start + 1

    for step in range(start + 1, args.steps + 1):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.save_every == 0:
            path = os.path.join(ckpts, f"model_{step}.pt")
            torch.save(model.state_dict(), path)
            report["saved"][os.path.relpath(path, args.output_dir)] = {
                "step": step, "sha256": sha256_file(path),
                "state_sha256": state_sha256(model.state_dict())}

    report["final_state_sha256"] = state_sha256(model.state_dict())
    write_report(args.report, report)


if __name__ == "__main__":
    sys.exit(main())
