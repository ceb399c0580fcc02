"""What a person sees on the console: TensorFlow's C++ logging quieted, known-harmless warnings
filtered where they arise, our own notices as one plain line, progress with a rate and an ETA.

No TensorFlow here: :func:`quiet_tensorflow` must run before TensorFlow is imported.
``--verbose`` on a command (or ``TFMARKET_VERBOSE=1``) shows everything again.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import warnings

VERBOSE_ENV = "TFMARKET_VERBOSE"

# Python warnings that are known to be harmless where they arise: (category, message regex).
HARMLESS_FIT_WARNINGS = (
    # Keras says it ignores shuffle=True for a tf.data input: our P x K sampler shuffles.
    (UserWarning, r"`shuffle=True` was passed, but will be ignored"),
)
HARMLESS_EXPORT_WARNINGS = (
    # Keras's ONNX export (tf2onnx inside) calls numpy APIs that numpy 2 deprecates; only
    # those two categories are ignored, and only around that call.
    (FutureWarning, r".*"),
    (DeprecationWarning, r".*"),
)


_PREPARED: list[str] = []  # what quiet_tensorflow chose for the process, one line each


def quiet_tensorflow(verbose: bool = False) -> None:
    """Prepares the process for TensorFlow: tunes glibc malloc
    (:func:`tfmarket.allocator.tune_malloc`), turns oneDNN on where TensorFlow would leave it off
    (:func:`tfmarket.hardware.choose_onednn`) and silences TensorFlow's C++ INFO/WARNING lines
    (oneDNN, CPU-feature, tf.data notes).

    Must run before TensorFlow is imported (it reads ``TF_CPP_MIN_LOG_LEVEL`` and
    ``TF_ENABLE_ONEDNN_OPTS`` once, and its first tensors should come from the tuned
    allocator). Errors still print. Values the user set are kept; ``verbose`` leaves
    TensorFlow's log level as it is and prints what was chosen, one line each.
    """
    if not _PREPARED:  # once per process: a second call must not read back our own setting
        from tfmarket.allocator import tune_malloc
        from tfmarket.hardware import ONEDNN_ENV, choose_onednn, cpu_flags

        _PREPARED.append(tune_malloc())
        onednn, onednn_line = choose_onednn(cpu_flags(), dict(os.environ))
        if onednn is not None and "tensorflow" not in sys.modules:
            os.environ[ONEDNN_ENV] = onednn
        _PREPARED.append(onednn_line)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    if is_verbose():
        for line in _PREPARED:
            notice(line)
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# TensorFlow's C++ INFO/WARNING lines ("I0000 00:00:17... port.cc:153] oneDNN custom operations
# are on ...", "2026-... I tensorflow/...cpu_feature_guard..."), the continuation line of the
# CPU-feature note, and absl's "All log messages before absl::InitializeLog()" banner.
_TF_NOISE = re.compile(
    r"^([IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] |"
    r"WARNING: All log messages before absl::InitializeLog\(\)|"
    r"To enable the following instructions: .* rebuild TensorFlow)")


def import_tensorflow_quietly(verbose: bool = False):
    """``import tensorflow`` with its import-time C++ notes dropped; returns the module.

    Some of those lines (oneDNN's "custom operations are on", absl's InitializeLog banner) are
    written through absl logging, which ignores ``TF_CPP_MIN_LOG_LEVEL``, so file descriptor 2
    is captured for the import and every other line (errors included) is written back.
    """
    quiet_tensorflow(verbose)
    if "tensorflow" in sys.modules or is_verbose():
        import tensorflow

        return tensorflow
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            # Also when the import fails: whatever TensorFlow said about it is written back.
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines()
                    if line.strip() and not _TF_NOISE.search(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()
    return tensorflow


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def harmless_warnings_ignored(patterns):
    """Ignores the given (category, message regex) warnings inside the block, unless verbose."""
    with warnings.catch_warnings():
        if not is_verbose():
            for category, message in patterns:
                warnings.filterwarnings("ignore", message=message, category=category)
        yield


_NOTICES_SHOWN: set[str] = set()


def notice(message: str) -> None:
    """One plain ``tfmarket: ...`` line on stderr, shown once per process."""
    if message in _NOTICES_SHOWN:
        return
    _NOTICES_SHOWN.add(message)
    print(f"tfmarket: {message}", file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """A one-line progress report: ``label: done/total unit[, extra], rate, ETA m:ss``.

    The rate is ``rate_scale`` x done per second in ``rate_unit`` (an epoch counts steps and
    shows images/s). On a terminal the line is redrawn in place (at most every ``interval``
    seconds); in a log file only the final line is written, so logs stay short. Written to
    stderr by default, so a command's stdout stays machine-readable.
    """

    def __init__(self, total: int, label: str, unit: str = "images", *,
                 rate_unit: str | None = None, rate_scale: float = 1.0, interval: float = 0.5,
                 stream=None):
        self.total, self.label, self.unit, self.interval = total, label, unit, interval
        self.rate_unit = rate_unit or f"{unit}/s"
        self.rate_scale = rate_scale
        self.stream = stream or sys.stderr
        self.dynamic = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.last_draw = 0.0
        self.done = 0
        self.extra = ""

    def rate(self) -> float:
        """Items per second so far (before ``rate_scale``)."""
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def line(self) -> str:
        rate = self.rate()
        elapsed = time.perf_counter() - self.start
        text = (f"{self.label}: {self.done:,}/{self.total:,} {self.unit}{self.extra}, "
                f"{rate * self.rate_scale:,.1f} {self.rate_unit}")
        if self.done < self.total and rate > 0:
            return text + f", ETA {format_duration((self.total - self.done) / rate)}"
        return text + f", {format_duration(elapsed)}"

    def update(self, done: int, extra: str = "") -> None:
        self.done, self.extra = done, extra
        now = time.perf_counter()
        if self.dynamic and (now - self.last_draw >= self.interval or done >= self.total):
            self.last_draw = now
            self.stream.write("\r" + self.line() + "\033[K")
            self.stream.flush()

    def close(self) -> None:
        """Ends the line (terminal) or writes the one summary line (log file)."""
        self.stream.write(("\r" + self.line() + "\033[K" if self.dynamic else self.line()) + "\n")
        self.stream.flush()


def readable(result: dict, indent: str = "  ") -> str:
    """A command's result dict as short ``key: value`` lines (lists shortened, floats rounded),
    for people; ``--json`` prints the dict itself."""
    lines = []
    for key, value in result.items():
        label = key.replace("_", " ")
        if isinstance(value, dict):
            inner = ", ".join(f"{k.replace('_', ' ')} {_short(v)}" for k, v in value.items()
                              if not isinstance(v, dict | list))
            if inner:
                lines.append(f"{indent}{label}: {inner}")
        else:
            lines.append(f"{indent}{label}: {_short(value)}")
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        if len(value) <= 6 and all(isinstance(v, str | int | float) for v in value):
            return ", ".join(_short(v) for v in value)
        return f"[{len(value)} items]"
    return str(value)


def print_result(result: dict, title: str, as_json: bool) -> None:
    """Prints a command's result: the JSON with ``--json``, else a title and readable lines."""
    import json

    if as_json:
        print(json.dumps(result, indent=2, default=float))
    else:
        print(title)
        print(readable(result))
