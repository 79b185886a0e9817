"""OIALR in Lightning: a small CNN on random images.

    python examples/lightning_cnn.py [--storage sqlite:///oialr.db] [--output runs/lightning-cnn]

Trains 4 epochs with OIALR converting at step 16 and updating every 8, checkpointing each epoch,
prints the ranks; with --storage the run appears on the dashboard (`streamlit run app`).
"""

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from oialr.integrations.lightning import OIALRCallback


class CNN(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10),
        )  # fmt: skip

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def images(n=256):
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(
        torch.randn(n, 3, 12, 12, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", help="record the run there for the dashboard")
    parser.add_argument("--output", default="runs/lightning-cnn", help="checkpoints go here")
    parser.add_argument("--resume", help="a checkpoint to continue from")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    L.seed_everything(0, verbose=False)
    oialr = OIALRCallback(delay=16, update_freq=8, sigma_cutoff=0.2, storage=args.storage,
                          name="lightning-cnn")  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=args.epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[oialr, ModelCheckpoint(dirpath=args.output, every_n_epochs=1, save_top_k=-1)],
    )  # fmt: skip
    module = CNN()
    trainer.fit(module, torch.utils.data.DataLoader(images(), batch_size=32), ckpt_path=args.resume)
    print("ranks:", oialr.controller.ranks())
    print(f"trainable fraction: {oialr.controller.trainable_fraction():.3f}")
    return trainer, oialr


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
