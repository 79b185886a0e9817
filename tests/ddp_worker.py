"""Run under torchrun: train an MLP with OIALR under DDP and save each rank's final state."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tiny_models import task
from torch.nn.parallel import DistributedDataParallel as DDP

import oialr


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial model on every rank
    model, xs, ys = task("mha", n=512)
    ddp = DDP(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=3e-3)
    ctl = oialr.OIALR(ddp, opt, delay=10, update_freq=8, sigma_cutoff=0.3)
    shard = slice(rank * 256, (rank + 1) * 256)  # each rank sees different data
    xs, ys = xs[shard], ys[shard]
    rewraps = 0
    for i in range(50):
        j = (i * 32) % 256
        loss = F.cross_entropy(ddp(xs[j : j + 32]), ys[j : j + 32])
        loss.backward()
        opt.step()
        opt.zero_grad()
        if ctl.step() == "convert":  # new Parameters: DDP must see them (once, not per update)
            ddp = DDP(ddp.module)
            ctl.model = ddp
            rewraps += 1
    state = {k: v.clone() for k, v in ddp.module.state_dict().items() if torch.is_tensor(v)}
    torch.save(
        {"state": state, "ranks": ctl.ranks(), "rewraps": rewraps, "history": len(ctl.history)},
        out / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
