"""Your own model, dataset and training loop, for the specs beside this file.

    PYTHONPATH=examples/own_model oialr study run examples/own_model/study.toml
    PYTHONPATH=examples/own_model oialr study run examples/own_model/own_loop.toml

A study names them by import string: ``model = "nets:build"``, ``dataset = "nets:load"``,
``objective.train = "nets:train"``. Nothing here is specific to OIALR but ``run.oialr(...)``.
"""

import torch
import torch.nn.functional as F
from torch import nn


def build(width=64, input_shape=(16,), num_classes=4):
    """Called with the spec's model_options, plus the data's input shape and class count."""
    features = int(torch.tensor(input_shape).prod())
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes),
    )  # fmt: skip


def load(n=2400, seed=0):
    """Called with the spec's dataset_options (and seed): returns the splits as tensors."""
    g = torch.Generator().manual_seed(1234)  # the same data for every seed and trial
    x = torch.randn(n, 16, generator=g)
    y = (torch.tanh(x @ torch.randn(16, 16, generator=g)) @ torch.randn(16, 4, generator=g)).argmax(
        1
    )
    cut = n * 5 // 6
    return {"train": (x[:cut], y[:cut]), "test": (x[cut:], y[cut:])}


def train(run):
    """One trial: ``run.config`` holds the spec's [run] table with the trial's parameters."""
    cfg = run.config
    x, y = load()["train"]
    val_x, val_y, x, y = x[:400], y[:400], x[400:], y[400:]
    torch.manual_seed(cfg.seed)
    model = build(**cfg.model_options, input_shape=(16,), num_classes=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    per_epoch = len(x) // cfg.batch_size
    ctl = run.oialr(model, optimizer, steps_per_epoch=per_epoch, total_steps=per_epoch * cfg.epochs)
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x))
        for i in range(per_epoch):
            batch = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            ctl.step()  # OIALR: conversion, rank updates
            step += 1
            run.log(step, loss=loss.item())
        with torch.no_grad():
            accuracy = (model(val_x).argmax(1) == val_y).float().mean().item()
        run.epoch(val_acc=accuracy)  # the objective, and the pruner's signal
