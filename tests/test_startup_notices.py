"""TensorFlow's start-up notices kept out of a command's stderr, every other line kept."""

import subprocess
import sys

import pytest
from conftest import ROOT

from patchvae_tf import startup_notices

NOTICES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796433371.323800   21806 port.cc:153] oneDNN custom operations are on. "
    "You may see slightly different numerical results.",
    "I0000 00:00:1796433371.324099   21806 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796433374.748467   21806 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error",
]
KEPT = [
    "E0000 00:00:1796433374.748467   21806 saver.cc:12] a real error",
    "W1205 01:02:03.000000   21806 port.cc:99] another notice from the same file",
    "Traceback (most recent call last):",
    "error: something the user must read",
]


def test_pattern_drops_the_notices_and_keeps_cuda_where_a_gpu_exists():
    no_gpu, gpu = startup_notices.notice_pattern(False), startup_notices.notice_pattern(True)
    assert [bool(no_gpu.match(line.encode())) for line in NOTICES + KEPT] == [True] * 4 + [
        False
    ] * 4
    # With a GPU present, CUDA failing to start is an error the user must see.
    assert [bool(gpu.match(line.encode())) for line in NOTICES] == [True, True, False, False]


SCRIPT = """
import os, sys
sys.path.insert(0, {root!r})
from patchvae_tf import startup_notices
startup_notices.filter_stderr()
lines = {lines!r}
os.write(2, "\\n".join(lines).encode() + b"\\n")
os.write(2, b"progress 50%\\r")  # a partial line passes at once
sys.stderr.write("from python\\n")
sys.stderr.flush()
if {abort!r}:
    os.write(2, b"dying\\n")
    os.abort()
"""


@pytest.mark.parametrize("abort", [False, True])
def test_filter_keeps_every_other_line_even_when_the_process_dies(abort, tmp_path):
    script = SCRIPT.format(root=ROOT, lines=NOTICES[:2] + KEPT, abort=abort)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    expected = "\n".join(KEPT) + "\nprogress 50%\rfrom python\n" + ("dying\n" if abort else "")
    assert result.stderr.decode() == expected
    assert result.returncode == (-6 if abort else 0)
