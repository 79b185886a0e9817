"""OIALR in Hugging Face's Trainer: a tiny GPT-2 built from a config (nothing downloaded).

    python examples/hf_trainer.py [--storage sqlite:///oialr.db] [--output runs/hf-gpt2]

Trains 60 steps with OIALR converting at step 20 and updating every 10, checkpointing every 20,
prints the ranks; with --storage the run appears on the dashboard (`streamlit run app`).
"""

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from oialr.integrations.transformers import OIALRCallback


class Tokens(torch.utils.data.Dataset):
    """Random token sequences: enough for a language model to fit something."""

    def __init__(self, n=256, length=32, vocab=128):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", help="record the run there for the dashboard")
    parser.add_argument("--output", default="runs/hf-gpt2", help="checkpoints go here")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                        bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = GPT2LMHeadModel(config)
    oialr = OIALRCallback(delay=20, update_freq=10, sigma_cutoff=0.2, storage=args.storage,
                          name="hf-gpt2")  # fmt: skip
    training = TrainingArguments(
        output_dir=args.output, max_steps=60, per_device_train_batch_size=16,
        gradient_accumulation_steps=2, learning_rate=3e-3, logging_steps=10, save_steps=20,
        use_cpu=True, report_to=[], disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=training, train_dataset=Tokens(), callbacks=[oialr])
    trainer.train(resume_from_checkpoint=args.resume or None)
    print("ranks:", oialr.controller.ranks())
    print(f"trainable fraction: {oialr.controller.trainable_fraction():.3f}")
    return trainer, oialr


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
