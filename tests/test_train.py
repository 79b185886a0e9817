"""One training run end to end: modes, recording, divergence, checkpoints and resume."""

import json
import shlex

import pytest
import torch

import oialr
from oialr.cli import main
from oialr.data import load_dataset
from oialr.metrics_reader import MetricsReader
from oialr.metrics_store import MetricsStore
from oialr.models import build_model
from oialr.options import train_command
from oialr.recorders import Recorder, StoreRecorder
from oialr.run_config import RunConfig
from oialr.train import fit

SMALL = dict(dataset="synthetic", epochs=3, batch_size=64, model_options={"widths": [64, 64]})
OIALR_OPTIONS = dict(delay=20, update_freq=10, sigma_cutoff=0.2)


def config(oialr=None, **overrides):
    options = {**OIALR_OPTIONS, **(oialr or {})}
    if overrides.get("mode") == "fixed-rank":
        options.setdefault("fixed_rank", 0.25)
    return RunConfig.build(**{**SMALL, "oialr": options, **overrides})


@pytest.fixture
def store(tmp_path):
    with MetricsStore(f"sqlite:///{tmp_path / 'runs.db'}") as s:
        yield s


@pytest.fixture
def reader(store):
    return MetricsReader(store.engine)


@pytest.mark.parametrize("mode", ["dense", "oialr", "fixed-rank"])
def test_fit_in_each_mode_records_the_run(mode, store, reader):
    result = fit(config(mode=mode), StoreRecorder(store))
    assert result.steps == 3 * (1843 // 64) and result.epochs == 3
    assert result.test_acc > 0.2, "well above chance (0.1) on the synthetic task"
    run = reader.run(result.run_id)
    assert run["status"] == "complete" and run["mode"] == mode
    assert run["result"]["test_acc"] == pytest.approx(result.test_acc)
    epochs = reader.metrics("epochs", result.run_id)
    assert list(epochs["epoch"]) == [1, 2, 3] and epochs["val_acc"].between(0, 1).all()
    assert len(reader.metrics("steps", result.run_id)) == result.steps // 10
    layers = reader.metrics("layers", result.run_id)
    if mode == "dense":
        assert result.trainable_fraction == 1.0 and layers.empty and result.conversion_step is None
    else:
        assert result.conversion_step == 20 and run["conversion_step"] == 20
        assert result.trainable_fraction < 1.0
        assert set(layers["event"]) == ({"convert", "update"} if mode == "oialr" else {"convert"})
    if mode == "oialr":
        assert not reader.metrics("stability", result.run_id).empty  # warm-up stability


def test_delay_and_update_frequency_units():
    per_epoch = 1843 // 64
    units = dict(delay=0.5, delay_unit="fraction", update_freq=1, update_freq_unit="epochs")
    result = fit(config(oialr=units))
    assert result.conversion_step == round(0.5 * 3 * per_epoch)


def test_nan_loss_fails_cleanly_and_is_recorded(store, reader):
    cfg = config(mode="dense", lr=1e12, optimizer="sgd", grad_clip=None, log_every=1)
    with pytest.raises(oialr.OIALRError, match=r"loss became nan at step \d+.*lower --lr"):
        fit(cfg, StoreRecorder(store))
    run = reader.runs().iloc[-1]
    assert run["status"] == "failed" and "loss became nan" in run["error"]


class StopAfter(Recorder):
    def __init__(self, epoch):
        self.stop_epoch = epoch

    def epoch(self, metrics):
        if metrics["epoch"] == self.stop_epoch:
            raise KeyboardInterrupt


def test_resume_continues_bit_for_bit(tmp_path):
    whole = fit(config(checkpoint_dir=str(tmp_path / "a")))
    cfg = config(checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, StopAfter(3))  # interrupted in the last epoch, after epoch 2's checkpoint
    resumed = fit(cfg, resume=True)
    assert resumed.test_acc == whole.test_acc and resumed.test_loss == whole.test_loss
    assert resumed.ranks == whole.ranks and resumed.steps == whole.steps
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]) if torch.is_tensor(value) else value == b[key], key


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    cfg = config(epochs=1, checkpoint_dir=str(tmp_path))
    fit(cfg)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(oialr.ConfigError, match="checkpoint.*damaged.*drop --resume"):
        fit(cfg, resume=True)


@pytest.mark.parametrize(
    ("model", "dataset_shape"),
    [
        ("mlp", (1, 28, 28)),
        ("lenet5", (1, 28, 28)),
        ("resnet20", (3, 32, 32)),
        ("minivit", (3, 32, 32)),
    ],
)
def test_every_model_converts_and_keeps_its_function(model, dataset_shape):
    torch.manual_seed(0)
    net = build_model(model, dataset_shape, 10).eval()
    x = torch.randn(4, *dataset_shape)
    before = net(x)
    opt = torch.optim.AdamW(net.parameters())
    ctl = oialr.OIALR(net, opt, delay=0, update_freq=10)
    assert ctl.ranks(), ctl.report
    torch.testing.assert_close(net(x), before, atol=1e-4, rtol=1e-4)
    net.train()
    net(x).sum().backward()


def test_cli_train_prints_json_and_reproduces_from_its_command(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    cfg = config(epochs=2, oialr={"sigma_cutoff": 0.3, "min_rank": 3})
    args = shlex.split(train_command(cfg))[2:] + [
        "--storage",
        db,
        "--json",
        "--checkpoint-dir",
        str(tmp_path),
    ]
    assert main(["train", *args]) == 0
    printed = json.loads(capsys.readouterr().out)
    direct = fit(cfg)
    assert printed["test_acc"] == direct.test_acc and printed["ranks"] == direct.ranks
    with MetricsStore(db) as written:
        assert MetricsReader(written.engine).runs()["status"].tolist() == ["complete"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "zero"], "--epochs: must be a whole number, not str"),
        (["--sigma-cutoff", "1.5"], "--sigma-cutoff: Input should be less than 1 (got 1.5)"),
        (["--model", "gpt9"], "gpt9"),
        (["--dataset", "imagenet21k"], "imagenet21k"),
        (["--model-options", "nonsense"], "KEY=VALUE"),
        (["--max-cut-per-update", "1.5"], "--max-cut-per-update: Input should be less than"),
        (["--delay", "inf"], "--delay: must be finite"),
        (["--epochs", "2.5"], "--epochs: must be a whole number"),
        (["--mode", "fixed-rank"], "mode 'fixed-rank' needs oialr.fixed_rank"),
        (["--config", "/nonexistent/run.toml"], "no such file"),
        (["--storage", "notaurl"], "notaurl"),
    ],
)
def test_cli_train_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--dataset", "synthetic", "--epochs", "1", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir()), "a refused command writes nothing"


def test_resolve_dataset_shapes_match_the_models():
    data = load_dataset("synthetic")
    net = build_model("mlp", data.input_shape, data.num_classes)
    assert net(data.test_x[:2]).shape == (2, data.num_classes)
