"""TensorFlow's C++ start-up notices kept out of a command's stderr, every other line kept."""

from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys

# TensorFlow logs these through absl before absl's logging is set up, so TF_CPP_MIN_LOG_LEVEL
# does not reach them: the oneDNN notice, and where no NVIDIA device exists, CUDA's absence.
_ABSL = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_ONEDNN = rb"[IW]\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on"
_NO_CUDA = (
    rb"[IWE]\d{4} [\d:. ]+\d+ (cudart_stub\.cc:\d+\] Could not find cuda drivers"
    rb"|cuda_platform\.cc:\d+\] failed call to cuInit)"
)


def notice_pattern(gpu_present: bool) -> re.Pattern:
    """The lines dropped: CUDA's absence is a notice only where there is no GPU to find."""
    kinds = [re.escape(_ABSL), _ONEDNN] + ([] if gpu_present else [_NO_CUDA])
    return re.compile(b"^(?:" + b"|".join(kinds) + b")")


# The filter runs in a process of its own, so that what a crash writes (a Python fatal
# error, a failed TensorFlow check) still reaches the terminal after this process is gone.
_FILTER = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: drain until the command is gone
pattern = re.compile(sys.argv[1].encode("latin-1"))
heads = (b"WARNING: All log", b"I0", b"W0", b"E0")
pending = b""
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    pending += chunk
    *lines, pending = pending.split(b"\n")
    out = b"".join(line + b"\n" for line in lines if not pattern.match(line))
    # A partial line is held only while it could still become a notice (progress bars
    # that end in a carriage return pass at once).
    if pending and not any(h.startswith(pending[:len(h)]) for h in heads):
        out, pending = out + pending, b""
    if out:
        os.write(2, out)
if pending and not pattern.match(pending):
    os.write(2, pending)
"""


def filter_stderr() -> None:
    """From here on, this process's stderr (fd 2, the C++ logs included) passes through a
    filter process that drops TensorFlow's start-up notices. For commands, not the library.
    """
    pattern = notice_pattern(os.path.exists("/dev/nvidia0") or os.path.exists("/dev/dxg"))
    sys.stderr.flush()
    proc = subprocess.Popen(
        [sys.executable, "-c", _FILTER, pattern.pattern.decode("latin-1")],
        stdin=subprocess.PIPE,
        close_fds=True,
    )
    terminal = os.dup(2)
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()  # fd 2 is now the only writer: the filter ends when this process does

    def drain():
        # At a normal exit, put the terminal back and let the filter finish its lines, so
        # none arrives after the shell's prompt.
        sys.stderr.flush()
        os.dup2(terminal, 2)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a child process still holds the pipe
            pass

    atexit.register(drain)
