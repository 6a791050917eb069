"""The commands' entry points: a bad flag is refused before TensorFlow loads."""

import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_train

from patchvae_tf import config
from patchvae_tf.config import cli

# Runs a command as `python X` / `python -m X` would, and reports at exit which of the heavy
# packages it imported: the flags must be checked with none of them loaded.
_PROBE = """
import atexit, runpy, sys
def report():
    heavy = sorted(m for m in ("tensorflow", "keras", "tensorflow_probability") if m in sys.modules)
    print("LOADED:" + ",".join(heavy), file=sys.stderr)
atexit.register(report)
target, argv = sys.argv[1], sys.argv[2:]
sys.argv = [target, *argv]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(
    "target,flag",
    [
        ("train.py", "--num_parts=0"),
        ("evaluate.py", "--mode=nope"),
        ("train_classifier.py", "--labels_per_class=-1"),
        ("export", "--quantize=int3"),
        ("benchmarks", "--no_such_flag=1"),
    ],
)
def test_bad_flag_fails_before_tensorflow_loads(target, flag, tmp_path):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, target, flag, f"--workdir={tmp_path / 'w'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    loaded = result.stderr.rsplit("LOADED:", 1)[1].strip()
    assert loaded == "", f"{target} {flag} loaded {loaded} in {seconds:.1f} s before refusing"


def test_the_probe_sees_tensorflow_when_it_loads(tmp_path):
    """The check above can fail: a command that imports the library first is caught."""
    script = tmp_path / "eager.py"
    script.write_text("import patchvae_tf\npatchvae_tf.load\nraise SystemExit(2)\n")
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "tensorflow" in result.stderr.rsplit("LOADED:", 1)[1]


def test_lazy_names_resolve_and_unknown_names_raise():
    import patchvae_tf

    assert patchvae_tf.load.__module__ == "patchvae_tf.pretrained"
    assert patchvae_tf.PatchVAE.__name__ == "PatchVAE"
    with pytest.raises(AttributeError, match="no_such_name"):
        patchvae_tf.no_such_name  # noqa: B018


def test_help_lists_each_section_and_exits_0():
    result = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "Where the images come from" in result.stdout  # DataConfig's description
    assert "--num_parts: N, number of parts (default: 16)" in result.stdout


def test_flagfile_parsing():
    argv = ["train.py", f"--flagfile={ROOT}/configs/shapes.cfg", "--num_parts=5"]
    cfg = cli.parse(config.Config, argv)
    assert cfg.data.dataset == "shapes" and cfg.model.encoder == "pyramid"
    assert cfg.model.num_parts == 5 and cfg.model.prior == 0.2
    for name in ("cifar100", "indoor67", "places205", "imagenet", "mnist"):
        parsed = cli.parse(config.Config, ["train.py", f"--flagfile={ROOT}/configs/{name}.cfg"])
        assert parsed.train.workdir == f"runs/{name}"


def test_commands_sharing_a_flag_name_keep_their_own_defaults():
    """evaluate.py's --dataset defaults to None (the training data), train.py's to shapes,
    whichever command parsed first in this process.
    """
    assert cli.parse(config.EvalConfig, ["evaluate.py"]).dataset is None
    assert cli.parse(config.Config, ["train.py"]).data.dataset == "shapes"
    assert cli.parse(config.EvalConfig, ["evaluate.py"]).dataset is None


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--num_parts=0"], "--num_parts must be positive, got 0"),
        (["--batch_size=-4"], "--batch_size must be positive, got -4"),
        (["--image_size=30", "--scale=8"], "--image_size=30 is not divisible by --scale=8"),
        (["--encoder=vgg"], "unknown --encoder 'vgg'"),
        (["--num_parts=abc"], "abc"),
        (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
        (["positional"], "unexpected arguments ['positional']"),
        (["--flagfile={tmp}/missing.cfg"], "Unable to open flagfile"),
        (["--flagfile={tmp}/bad.cfg"], "flag --image_size=abc: invalid literal"),
        (["--strategy=foo"], "unknown --strategy 'foo'"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path):
    (tmp_path / "bad.cfg").write_text("--dataset=shapes\n--image_size=abc\n")
    args = [a.format(tmp=tmp_path) for a in args]
    result = run_train([*args, f"--workdir={tmp_path / 'w'}"])
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()
