"""The `oialr` command as a unit: what it loads, how `--config` and flags combine."""

import re
import subprocess
import sys

import pytest

from oialr.cli import _run_config_from_args, build_parser
from oialr.errors import ConfigError

HEAVY = "{'optuna', 'streamlit', 'plotly', 'pandas', 'sqlalchemy'}"


def loaded(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_library_loads_no_studio_package():
    code = f"import oialr, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY}))"
    assert loaded(code) == "[]"
    assert (
        loaded(
            "import oialr, sys; oialr.OIALR; print('optuna' in sys.modules, 'torch' in sys.modules)"
        )
        == "False True"
    )


def test_the_command_line_loads_no_torch_until_it_trains():
    assert loaded("import oialr.cli, oialr.spec, sys; print('torch' in sys.modules)") == "False"


def test_train_help_lists_every_option(capsys):
    from oialr.options import OPTIONS

    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["train", "--help"])
    shown = capsys.readouterr().out
    assert done.value.code == 0
    assert all(option.flag in shown for option in OPTIONS.values())


def train_args(argv):
    return build_parser().parse_args(["train", *argv])


def test_flags_go_over_a_config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("epochs = 4\nlr = 0.01\n[oialr]\ndelay = 50\nsigma_cutoff = 0.3\n")
    cfg = _run_config_from_args(
        train_args(["--config", str(path), "--delay", "70", "--epochs", "2"])
    )
    assert (cfg.epochs, cfg.lr, cfg.oialr.delay, cfg.oialr.sigma_cutoff) == (2, 0.01, 70, 0.3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs = 0\n", "--epochs: Input should be greater than or equal to 1"),
        ("[oialr]\ndelay = -1\n", "--delay: Input should be greater than or equal to 0"),
        ("[oialr]\ndealy = 1\n", "unknown option (a typo?)"),
        ("epochs = \n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_names_the_option(text, message, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        _run_config_from_args(train_args(["--config", str(path)]))
