"""The flat option table: every RunConfig and OIALRConfig field is a flag, a searchable field
when it is a hyperparameter, and survives the reproducing command."""

import argparse
import shlex

import pytest

from oialr.config import OIALRConfig
from oialr.errors import ConfigError
from oialr.options import (
    OPTIONS,
    SEARCHABLE,
    add_flags,
    flag_for,
    nest,
    train_command,
    values_from_flags,
)
from oialr.run_config import RunConfig


def parse(argv):
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return RunConfig.build(**values_from_flags(parser.parse_args(argv)))


def test_every_field_of_both_models_is_one_option():
    fields = set(RunConfig.model_fields) - {"oialr"} | set(OIALRConfig.model_fields)
    assert set(OPTIONS) == fields
    assert OPTIONS["delay"].path == ("oialr", "delay") and OPTIONS["lr"].path == ("lr",)
    assert OPTIONS["delay"].unit == "delay_unit" and OPTIONS["lr"].unit is None


def test_searchable_fields_are_the_hyperparameters():
    assert {"delay", "update_freq", "sigma_cutoff", "lr", "min_rank", "switch", "optimizer"} <= set(
        SEARCHABLE
    )
    # what describes the run, not its training, is never searched
    assert not {
        "seed",
        "epochs",
        "mode",
        "device",
        "delay_unit",
        "fixed_rank",
        "top_k_sigma",
    } & set(SEARCHABLE)


@pytest.mark.parametrize(
    "cfg",
    [
        RunConfig(),
        RunConfig(
            model="lenet5",
            lr=0.5,
            grad_clip=None,
            oialr=OIALRConfig(
                delay=0.3,
                delay_unit="fraction",
                include=["net.*", "head"],
                factored=False,
                min_rank=4,
            ),
        ),
        RunConfig(
            mode="fixed-rank",
            model_options={"widths": [64, 32]},
            oialr=OIALRConfig(fixed_rank=0.25, switch="stability", keep_last=False),
        ),
        RunConfig(mode="dense", data_dir="/data/x y", subset=100, amp=False),
    ],
)
def test_the_reproducing_command_reproduces_the_config(cfg):
    command = train_command(cfg)
    assert command.startswith("oialr train --model")
    assert parse(shlex.split(command)[2:]) == cfg


def test_nest_puts_each_option_where_it_lives():
    assert nest({"lr": 0.1, "delay": 5, "min_rank": 2}) == {
        "lr": 0.1,
        "oialr": {"delay": 5, "min_rank": 2},
    }


def test_flags_are_typed_from_the_fields():
    cfg = parse(
        [
            "--delay",
            "100",
            "--lr",
            "1e-2",
            "--no-keep-last",
            "--include",
            "a",
            "--include",
            "b",
            "--data-dir",
            "none",
            "--factored",
            "true",
        ]
    )
    assert cfg.oialr.delay == 100 and cfg.lr == 0.01 and cfg.oialr.keep_last is False
    assert cfg.oialr.include == ["a", "b"] and cfg.data_dir is None and cfg.oialr.factored is True
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse(["--model-options", "widths"])


def test_an_error_names_the_flag_behind_its_field():
    assert flag_for("oialr.sigma_cutoff") == "--sigma-cutoff"
    assert flag_for("model_options.widths") == "--model-options"
    assert flag_for("nothing") is None
