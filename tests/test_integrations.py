"""The trainer callbacks with the real packages: HF Trainer on tiny GPT-2 and BERT built from
configs, Lightning on a small CNN. Ranks fall, a checkpoint saved after conversion resumes with
the same ranks and the same losses, and a recorded run is what the dashboard's reader reads."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import read

from oialr.errors import ConfigError
from oialr.metrics_store import MetricsStore

transformers = pytest.importorskip("transformers", reason="pip install -e '.[dev]' (transformers)")


@pytest.fixture(autouse=True)
def one_thread():
    """Two cores shared by the suite; and one thread count for both halves of a resume."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, classify: bool, n: int = 64, length: int = 16, vocab: int = 100):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g) if classify else self.ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def hf_model(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2,
                                         n_head=2, bos_token_id=0, eos_token_id=0)  # fmt: skip
        return transformers.GPT2LMHeadModel(config)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=32, num_labels=3)  # fmt: skip
    return transformers.BertForSequenceClassification(config)


class StopAt(transformers.TrainerCallback):
    """Interrupts training after ``step`` (its checkpoint saved), as a killed job would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def hf_train(kind, out, *, stop_at=None, resume=False, storage=None, **oialr):
    from oialr.integrations.transformers import OIALRCallback

    callback = OIALRCallback(**({"delay": 4, "update_freq": 3, "sigma_cutoff": 0.3} | oialr),
                             storage=storage, name=f"hf-{kind}")  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=18, per_device_train_batch_size=8,
        gradient_accumulation_steps=2, logging_steps=1, save_steps=6, learning_rate=3e-3,
        use_cpu=True, report_to=[], disable_tqdm=True, seed=0,
    )  # fmt: skip
    extra = [StopAt(stop_at)] if stop_at else []
    trainer = transformers.Trainer(model=hf_model(kind), args=args,
                                   train_dataset=Tokens(kind == "bert"), callbacks=[callback, *extra])  # fmt: skip
    trainer.train(resume_from_checkpoint=resume or None)
    start = 12 if resume else 0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and h["step"] > start]
    return losses, callback, trainer


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_hf_trainer_converts_updates_and_resumes_exactly(kind, tmp_path):
    losses, callback, trainer = hf_train(kind, tmp_path / "whole")
    ctl = callback.controller
    assert ctl.converted and ctl.conversion_step == 4
    updates = [r for r in ctl.history if r.event == "update"]
    assert {r.step for r in updates} == {7, 10, 13, 16}, (
        "once per optimizer step, not per micro-batch"
    )
    assert any(r.rank_after < r.rank_before for r in updates), "ranks fall"
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged[-1]["oialr/trainable_fraction"] == pytest.approx(ctl.trainable_fraction())
    assert (tmp_path / "whole" / "checkpoint-12" / "oialr.pt").is_file()

    hf_train(kind, tmp_path / "cut", stop_at=12)
    shutil.rmtree(tmp_path / "cut" / "checkpoint-18", ignore_errors=True)
    resumed, again, _ = hf_train(kind, tmp_path / "cut", resume=True)
    assert again.controller.ranks() == ctl.ranks()
    assert resumed == losses[12:], "the same losses as the uninterrupted run"


def test_hf_trainer_records_a_run_the_dashboard_reads(tmp_path):
    url = f"sqlite:///{tmp_path / 'hf.db'}"
    _, callback, _ = hf_train("gpt2", tmp_path / "rec", storage=url)
    with MetricsStore(url) as store:
        reader = read(store)
        run = reader.runs().iloc[-1]
        assert (run["name"], run["status"], run["conversion_step"]) == ("hf-gpt2", "complete", 4)
        layers = reader.metrics("layers", int(run["id"]))
        assert set(layers["layer"]) == set(callback.controller.ranks())
        assert len(reader.metrics("steps", int(run["id"]))) == 18


def test_hf_trainer_refuses_what_would_never_convert(tmp_path):
    with pytest.raises(ConfigError, match="delay=100 steps is not shorter than the 18 steps"):
        hf_train("gpt2", tmp_path / "late", delay=100)
    with pytest.raises(ConfigError, match="OIALR option `sigma_cutof`"):
        hf_train("gpt2", tmp_path / "typo", sigma_cutof=0.1)


L = pytest.importorskip("lightning", reason="pip install -e '.[dev]' (lightning)")


class CNN(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 32),
            torch.nn.ReLU(), torch.nn.Linear(32, 10),
        )  # fmt: skip
        self.losses = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.losses.append((self.trainer.global_step, loss.item()))
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def lightning_fit(out, *, ckpt=None, accumulate=1, storage=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from oialr.integrations.lightning import OIALRCallback

    L.seed_everything(0, verbose=False)
    callback = OIALRCallback(
        delay=6, update_freq=4, sigma_cutoff=0.3, storage=storage, name="pl-cnn"
    )
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(128, 3, 8, 8, generator=g), torch.randint(0, 10, (128,), generator=g)
    )
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=5, accumulate_grad_batches=accumulate, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[callback, ModelCheckpoint(dirpath=str(out), every_n_epochs=1, save_top_k=-1)],
    )  # fmt: skip
    module = CNN()
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=16), ckpt_path=ckpt)
    return module.losses, callback


def test_lightning_converts_updates_and_resumes_exactly(tmp_path):
    losses, callback = lightning_fit(tmp_path / "whole")
    ctl = callback.controller
    assert ctl.converted and ctl.conversion_step == 6 and ctl.step_count == 40
    assert any(r.rank_after < r.rank_before for r in ctl.history if r.event == "update")
    resumed, again = lightning_fit(
        tmp_path / "again", ckpt=str(tmp_path / "whole" / "epoch=2-step=24.ckpt")
    )
    assert again.controller.ranks() == ctl.ranks()
    assert [loss for _, loss in resumed] == [loss for step, loss in losses if step >= 24]


def test_lightning_steps_once_per_optimizer_step_and_records(tmp_path):
    url = f"sqlite:///{tmp_path / 'pl.db'}"
    _, callback = lightning_fit(tmp_path / "acc", accumulate=2, storage=url)
    assert callback.controller.step_count == 20, "40 batches, 2 per optimizer step"
    with MetricsStore(url) as store:
        run = read(store).runs().iloc[-1]
        assert (run["name"], run["status"]) == ("pl-cnn", "complete")
        assert len(read(store).metrics("epochs", int(run["id"]))) == 5
