"""Configs check themselves the same way from Python and from the command line."""

import dataclasses
import json
import re

import pytest

from patchvae_tf import config
from patchvae_tf.config import Config, EvalConfig, ExportConfig, ModelConfig
from patchvae_tf.errors import UserError


@pytest.mark.parametrize(
    ("args", "build"),
    [
        (["--scale=3"], lambda: ModelConfig(scale=3)),
        (["--num_parts=-1"], lambda: ModelConfig(num_parts=-1)),
        (["--image_size=30", "--scale=8"], lambda: ModelConfig(image_size=30, scale=8)),
        (["--encoder=vgg"], lambda: ModelConfig(encoder="vgg")),
        (["--tau_min=2"], lambda: ModelConfig(tau_min=2.0)),
        (["--occurrence_prior=1"], lambda: ModelConfig(occurrence_prior=1.0)),
        (["--encoder=resnet", "--scale=2"], lambda: ModelConfig(encoder="resnet", scale=2)),
        (["--batch_size=0"], lambda: config.TrainConfig(batch_size=0)),
        (["--train_split=all_but_test"], lambda: config.DataConfig(train_split="all_but_test")),
        (["--tpu=x"], lambda: config.DistributeConfig(tpu="x")),
    ],
)
def test_python_and_the_command_line_give_one_message(args, build):
    from patchvae_tf.config import Config, cli

    with pytest.raises(UserError) as from_cli:
        cli.parse(Config, ["train.py", *args])
    with pytest.raises(UserError) as from_python:
        build()
    assert str(from_python.value) == str(from_cli.value)
    assert "--" in str(from_cli.value) and "\n" not in str(from_cli.value)


def test_every_config_checks_itself_when_built_replaced_or_read(tmp_path):
    cfg = Config()
    with pytest.raises(UserError, match=r"^--scale must be a power of two >= 2, got 3$"):
        cfg.replace(model=dataclasses.replace(cfg.model, scale=3))
    with pytest.raises(UserError, match=r"^--scale must be an integer, got 'eight'$"):
        Config.from_dict({"model": {"scale": "eight"}})
    with pytest.raises(UserError, match=r"^--num_parts must be an integer, got True$"):
        Config.from_dict({"model": {"num_parts": True}})
    with pytest.raises(UserError, match="unknown ModelConfig field 'num_part'"):
        Config.from_dict({"model": {"num_part": 4}})
    with pytest.raises(UserError, match="unknown config section 'modle'"):
        Config.from_dict({"modle": {}})
    with pytest.raises(UserError, match="Config.model must be a ModelConfig, got dict"):
        Config(model={"scale": 8})
    with pytest.raises(UserError, match="unknown --mode 'probes'"):
        EvalConfig(mode="probes")
    with pytest.raises(UserError, match=r"--freeze_stages must list depths >= 0"):
        EvalConfig(freeze_stages=[0, -2])
    with pytest.raises(UserError, match="add onnx or litert to --formats"):
        ExportConfig(workdir="w", export_dir="e", formats=("keras",), quantize="int8")
    # JSON's lists and integers become the fields' tuples and floats.
    assert EvalConfig(freeze_stages=[0, 1]).freeze_stages == (0, 1)
    assert Config.from_dict({"model": {"beta_occ": 2}}).model.beta_occ == 2.0
    round_trip = Config.from_dict(json.loads(Config().to_json()))
    assert round_trip == Config()
    # A config.json with a bad value names the file and the value.
    bad = json.loads(Config().to_json())
    bad["model"]["num_parts"] = 0
    path = tmp_path / "config.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"config '.*config.json': --num_parts must be positive"):
        config.load_config(str(path))


_WORKDIR = r"^--workdir is required, got '\s*'$"
_SEED = r"^--seed must be >= 0, got -1$"
_REFERENCE = r"^--reference_python, --reference_setup and --reference_venv need --reference="


@pytest.mark.parametrize(
    "spec, args, build, message",
    [
        (Config, ["--workdir="], lambda: config.TrainConfig(workdir=""), _WORKDIR),
        (EvalConfig, ["--workdir= "], lambda: EvalConfig(workdir=" "), _WORKDIR),
        (
            ExportConfig,
            ["--workdir=", "--export_dir=e"],
            lambda: ExportConfig(workdir="", export_dir="e"),
            _WORKDIR,
        ),
        (
            config.RecognizerConfig,
            ["--workdir=", "--encoder_workdir=w"],
            lambda: config.RecognizerConfig(workdir="", encoder_workdir="w"),
            _WORKDIR,
        ),
        (Config, ["--seed=-1"], lambda: config.TrainConfig(seed=-1), _SEED),
        (EvalConfig, ["--seed=-1"], lambda: EvalConfig(seed=-1), _SEED),
        (
            config.RecognizerConfig,
            ["--seed=-1", "--workdir=r", "--encoder_workdir=w"],
            lambda: config.RecognizerConfig(seed=-1, workdir="r", encoder_workdir="w"),
            _SEED,
        ),
        (config.BenchConfig, ["--seed=-1"], lambda: config.BenchConfig(seed=-1), _SEED),
        (config.ParityConfig, ["--seed=-1"], lambda: config.ParityConfig(seed=-1), _SEED),
        (
            config.BenchConfig,
            ["--reference_setup"],
            lambda: config.BenchConfig(reference_setup=True),
            _REFERENCE,
        ),
        (
            config.ParityConfig,
            ["--reference_venv=v"],
            lambda: config.ParityConfig(reference_venv="v"),
            _REFERENCE,
        ),
    ],
)
def test_a_shared_field_gives_every_command_one_message(spec, args, build, message):
    """--workdir, --seed and the --reference fields are written once: the same mistake reads
    the same from every command's command line and from Python.
    """
    from patchvae_tf.config import cli

    with pytest.raises(UserError) as from_cli:
        cli.parse(spec, ["cmd", *args])
    with pytest.raises(UserError) as from_python:
        build()
    assert str(from_python.value) == str(from_cli.value)
    assert re.match(message, str(from_cli.value)), from_cli.value


def test_labelled_data_is_the_listed_split_of_the_commands_dataset_or_the_training_one():
    trained = config.DataConfig(
        dataset="folder:all", train_split="all_but_test", test_split_file="test.txt"
    )
    own = EvalConfig().labelled(trained)
    assert own == dataclasses.replace(trained, train_split="listed")
    given = config.RecognizerConfig(
        workdir="r", encoder_workdir="w", dataset="cifar10", data_dir="/tfds"
    ).labelled(trained)
    assert (given.dataset, given.data_dir, given.test_split_file) == ("cifar10", "/tfds", None)
    assert given.train_split == "listed" and given.shapes_train_size == trained.shapes_train_size
