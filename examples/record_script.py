"""Record a plain training script (no study, no trainer) for the dashboard.

    python examples/record_script.py --storage sqlite:///oialr.db
    streamlit run app -- --storage sqlite:///oialr.db     # the run shows up live

Any loop works: ask the handle for the controller, log steps, report epochs.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from oialr.tracking import record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", default="sqlite:///oialr.db")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(1024, 32)
    y = (x @ torch.randn(32, 5)).argmax(1)
    model = nn.Sequential(
        nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with record(args.storage, name="my-script", model="mlp-128", dataset="blobs", epochs=5) as run:
        ctl = run.oialr(model, optimizer, delay=40, update_freq=10, sigma_cutoff=0.2)
        step = 0
        for _ in range(5):
            for i in range(0, 1024, 32):
                loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                ctl.step()
                step += 1
                run.log(step, loss=loss.item())
            with torch.no_grad():
                run.epoch(val_acc=(model(x).argmax(1) == y).float().mean().item())
    print(f"run {run.result.run_id}: ranks {ctl.ranks()}, trainable {ctl.trainable_fraction():.3f}")
    return run


if __name__ == "__main__":
    main()
