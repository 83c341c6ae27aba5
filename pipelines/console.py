"""What a run prints on the console, and where its full log goes (`console.verbose`, workflows/conf/config.yaml).

Without this, a `make run` console is mostly Ray talking: Ray Data logs a dozen progress lines every 10 s of
every dataset, Ray Train logs "Reporting training result ... TrainingReport(<every metric>)" on every report,
the training worker prints one line per step, and INFO lines of Ray's internals and library deprecation
warnings sit in between. A user needs the stage they are in, how far it is and when it ends, and any warning
they can act on. So, unless `console.verbose=true` (which keeps today's output, everything on the console):

- Every log record goes to ONE file per invocation, Hydra's job log `<paths.root>/hydra/<time>/<job>.log`
  (next to the `.hydra/` config that produced it), at INFO: our modules, Ray's loggers, Python warnings,
  everything printed on stdout, and every line the Ray workers print (prefixed with the actor or task and pid).
- The console (stderr) shows WARNING and above, minus warnings nobody can act on (a library's own deprecation
  notices, Ray's token-auth notice for a local cluster, Ray internals: NOT_ACTIONABLE), plus the few INFO
  lines a module marks with `extra=CONSOLE` (stage start/end, which cluster was joined, the log's path).
- Each long stage has one progress bar with an ETA: prepare's synthesis bar; for tokenize and evaluate one bar
  per Ray Data execution, labelled with the stage, in place of Ray Data's own display (`route_ray_logging` says
  why); and a training bar fed from the run's `metrics.jsonl` (step, loss, tok/s) instead of a printed line per
  step. On a console that is not a terminal (a pipe, a CI or `ray job` log) carriage-return redraws would pile
  up, so these bars print one plain line at most every `console.progress_interval_s` seconds.

Forwarded worker output carries no log level, so the driver sorts it by content (`_worker_line_level`): lines
marked WARNING/ERROR (the training worker marks its own, `mark_worker_warnings`), tracebacks and warnings our
code raised reach the console; the Ray Train controller's lines do too, because `train_log_level()` leaves it
printing WARNING and above only. Ray's cluster messages (raylet, autoscaler: OOM kills, unschedulable
requests) are printed the way Ray prints them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

log = logging.getLogger(__name__)

CONSOLE = {"console": True}  # `log.info(..., extra=CONSOLE)`: an INFO line the quiet console shows too
REPO_ROOT = Path(__file__).resolve().parents[1]
# Warnings no user can act on: they stay in the log file. Substrings of the message.
NOT_ACTIONABLE = (
    "Token authentication is enabled for this Ray cluster",  # the local cluster is ours; bound to 127.0.0.1
    "has constructor arguments in the object store and max_restarts > 0",  # Ray Data / Ray Train internals
    # Ray Train's placement-group cleaner finds the cluster by auto-detection, which fails (in its own thread, and
    # training goes on) while another Ray instance runs on the machine, e.g. a second pipeline.
    "Found multiple active Ray instances",
)
WORKER_LOGGER = "workers"  # what Ray workers print is logged under this name (not under "ray": its own handler)
_HANDLER_NAME = "ttt_console"  # our printer of forwarded worker output (Ray's is "ray_print_logs")
_MARKED = re.compile(r"\b(WARNING|ERROR|CRITICAL|FATAL)\b|^\w*(Error|Exception): ")
_PY_WARNING = re.compile(r"^(\S+\.py):\d+: \w*Warning: ")
_TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Console:
    """The console of this process, once `setup_console` ran."""

    verbose: bool
    progress_interval_s: float

    @property
    def quiet(self) -> bool:
        return not self.verbose


_console: Console | None = None
_stage = "run"  # the label of Ray Data's bars: the workflow, or full_run's current stage (set_stage)


def quiet() -> bool:
    """Whether a quiet console is set up (the default of every workflow; library use and tests change nothing)."""
    return _console is not None and _console.quiet


def _select(cfg: Any, key: str, default: Any) -> Any:
    section = cfg.get("console") if hasattr(cfg, "get") else None
    return default if section is None or section.get(key) is None else section.get(key)


def set_stage(name: str) -> None:
    """Label the progress bars of what runs next (full_run calls it per stage)."""
    global _stage
    _stage = name


def setup_console(cfg: Mapping[str, Any], job: str) -> Path:
    """Configure logging for a workflow's process (called first in its main); returns the log file.

    The log file is Hydra's job log when Hydra writes one, else `<paths.root>/logs/<job>.log` (appended)."""
    global _console
    set_stage(job)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    if not files:
        path = Path(str(cfg["paths"]["root"])).expanduser() / "logs" / f"{job}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root.addHandler(handler)
        files = [handler]
    log_file = Path(files[0].baseFilename)
    _console = Console(verbose=bool(_select(cfg, "verbose", False)),
                       progress_interval_s=float(_select(cfg, "progress_interval_s", 30.0)))
    for h in [h for h in root.handlers if isinstance(h, _TqdmHandler)]:
        root.removeHandler(h)  # set up again (tests, a second workflow in one process)
    if _console.quiet:
        for h in files:
            h.setLevel(logging.INFO)  # Ray Data's logger is at DEBUG: its records must not flood the file
        for h in [h for h in root.handlers if _is_console_handler(h)]:
            root.removeHandler(h)  # Hydra's (stdout, INFO)
        root.addHandler(_console_handler())
        warnings.showwarning = _log_warning
        if not isinstance(sys.stdout, _Tee):
            sys.stdout = _Tee(sys.stdout, files[0])
        _route_ray_loggers()  # Ray may be imported already (a notebook, a second workflow in one process)
    log.info("full log: %s", log_file, extra=CONSOLE)
    return log_file


def _is_console_handler(h: logging.Handler) -> bool:
    return isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)


class _ConsoleFilter(logging.Filter):
    """WARNING and above unless not actionable, and INFO lines marked `extra=CONSOLE`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", False):
            return True
        if record.levelno < logging.WARNING or getattr(record, "library_warning", False):
            return False
        message = record.getMessage()
        return not any(s in message for s in NOT_ACTIONABLE)


class _TqdmHandler(logging.Handler):
    """Writes through `tqdm.write`, so a line never lands in the middle of a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno < logging.WARNING or record.name == WORKER_LOGGER:
            return message  # forwarded worker lines carry their own level mark
        return f"{record.levelname} {record.name}: {message}"


def _console_handler() -> logging.Handler:
    handler = _TqdmHandler()
    handler.setFormatter(_ConsoleFormatter("%(message)s"))
    handler.addFilter(_ConsoleFilter())
    return handler


def _is_library(filename: str) -> bool:
    """Code outside this repository (site-packages, the standard library) or inside its virtualenv."""
    path = Path(filename).resolve()
    return not path.is_relative_to(REPO_ROOT) or "site-packages" in path.parts or ".venv" in path.parts


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """`warnings.showwarning`: to the log; the console only when our code raised it (a library's deprecation
    notice about its own internals is not something a user of this pipeline can fix)."""
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger("py.warnings").warning("%s", text, extra={"library_warning": _is_library(filename)})


class _Tee:
    """sys.stdout that also writes to the log file (the tokenize summary, the eval table, result paths)."""

    def __init__(self, stream: TextIO, handler: logging.FileHandler) -> None:
        self._stream = stream
        self._handler = handler

    def write(self, s: str) -> int:
        n = self._stream.write(s)
        if s and self._handler.stream is not None:
            with contextlib.suppress(ValueError, OSError):  # a closed log file must not break printing
                self._handler.acquire()
                try:
                    self._handler.stream.write(s)
                    self._handler.flush()
                finally:
                    self._handler.release()
        return n

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty (Ray Data picks its progress display by it), fileno, ...
        return getattr(self._stream, name)


# ---- progress bars ----------------------------------------------------------------------------------------

class _LineStream:
    """A tqdm file for a console that is not a terminal: each redraw becomes one plain line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._last = ""

    def write(self, s: str) -> None:
        for part in re.split(r"[\r\n]", s):
            part = part.strip()
            if part and part != self._last:
                self._stream.write(part + "\n")
                self._last = part

    def flush(self) -> None:
        self._stream.flush()


def progress_bar(desc: str, total: float | None, unit: str = "it", initial: float = 0, **options: Any) -> tqdm:
    """One stage's bar on stderr: redrawn in place on a terminal, else a line per `progress_interval_s`.
    `options` are tqdm's (delay, bar_format)."""
    stream = sys.stderr
    interval = _console.progress_interval_s if _console else 30.0
    if stream.isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=True, **options)
    # miniters=1: a line at the first update `interval` seconds after the last one (tqdm's adaptive miniters would
    # let its monitor thread redraw in between, and the next update would then print again at once)
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=_LineStream(stream), mininterval=interval,
                miniters=1, ncols=100, **options)


class MetricsFollower:
    """The training bar, fed from the run's metrics.jsonl (rank 0 appends a record per logged step).

    A file, not `ray.train.report`: reports come every `report_every_steps` and are a barrier on all ranks,
    while the JSONL gets every step for free, and the driver already reads it (the report stage; on a cluster
    `train.logging.dir` is shared storage, else no bar appears). A resumed run rewrites the file (rewound to the
    checkpoint's step, a new inode), so only records after that count."""

    def __init__(self, path: Path, total_steps: int, poll_s: float = 0.5) -> None:
        self.path = path
        self.total_steps = total_steps
        self.poll_s = poll_s
        self.bar: tqdm | None = None
        self._offset = 0
        self._inode: int | None = None
        self._partial = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="train-progress", daemon=True)
        try:
            st = path.stat()
            self._offset, self._inode = st.st_size, st.st_ino  # an earlier run's records are not this run's
        except OSError:
            pass

    def start(self) -> MetricsFollower:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop following, show the last record and leave the bar's final state on the console."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        self.poll()
        if self.bar is not None:
            self.bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self) -> None:
        """Read the records appended since the last poll and move the bar to the newest."""
        try:
            st = self.path.stat()
        except OSError:
            return
        if self._inode is not None and st.st_ino != self._inode:  # rewound by a resumed run: skip its old steps
            self._offset, self._partial = st.st_size, ""
        self._inode = st.st_ino
        if st.st_size <= self._offset:
            return
        with self.path.open() as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset = f.tell()
        *lines, self._partial = (self._partial + chunk).split("\n")
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        if records:
            self.update(records[-1])

    def update(self, record: Mapping[str, Any]) -> None:
        step = int(record.get("step", 0))
        if self.bar is None:  # created at the first step, so worker start-up does not count into the rate
            self.bar = progress_bar("train steps", self.total_steps, unit="step", initial=max(step - 1, 0))
        postfix = {}
        if "loss" in record:
            postfix["loss"] = f"{float(record['loss']):.3f}"
        if "tokens_per_s" in record:
            postfix["tok/s"] = f"{float(record['tokens_per_s']):,.0f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(max(step - self.bar.n, 0))


@contextlib.contextmanager
def training_progress(metrics_file: Path, total_steps: int) -> Iterator[MetricsFollower | None]:
    """A training bar for the duration of `trainer.fit()` on a quiet console; nothing otherwise (the workers'
    per-step lines are on the console then)."""
    if not quiet():
        yield None
        return
    follower = MetricsFollower(metrics_file, total_steps).start()
    try:
        yield follower
    finally:
        follower.close()


# ---- Ray --------------------------------------------------------------------------------------------------

def train_log_level() -> str:
    """Ray Train's console level (RunConfig.logging_config): WARNING leaves the controller's INFO chatter
    ("Requesting resources", "Started training worker group ...") in Ray's session logs, so whatever the
    controller prints is a warning. It filters `ray.train*` loggers only: "Reporting training result ..." is
    logged under the file path of ray/train/v2/_internal/execution/context.py (`getLogger(__file__)`), so on a
    quiet console that unmarked INFO line goes to the run's log file with the other worker output."""
    return "WARNING" if quiet() else "INFO"


def route_ray_logging() -> None:
    """Before `ray.init`: Ray's loggers into our handlers (file, quiet console), and Ray Data's progress display
    replaced by one bar per dataset (`_DatasetBar`). Ray gives the `ray` and `ray.data` loggers console handlers
    of their own that print INFO."""
    if not quiet():
        return
    import ray.data  # noqa: F401 - configures the `ray.data` logger, which must happen before we route it
    from ray.data._internal.execution import streaming_executor

    _route_ray_loggers()
    # Ray 2.60's own displays do not serve a stage: its operator bars are a block of lines per dataset, its
    # dataset-only bar counts the rows the driver consumes (none for a write or materialize: "0.00 row") and is
    # left on screen, and off a terminal it logs a dozen lines every 10 s. The executor asks this factory for
    # its display; if a Ray upgrade renames it, Ray's own display stays (nothing breaks).
    if hasattr(streaming_executor, "get_progress_manager"):
        streaming_executor.get_progress_manager = _dataset_bar


def _route_ray_loggers() -> None:
    """Ray's `ray` and `ray.data` loggers (given their own INFO console handlers and propagate=False when Ray is
    imported) into the root logger's handlers: the log file, and the quiet console's filter."""
    for name in ("ray", "ray.data"):
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if _is_console_handler(h)]:
            logger.removeHandler(h)
        logger.propagate = True


def _dataset_bar(ctx: Any, dataset_id: str, topology: Any, verbose_progress: bool) -> Any:
    """Ray Data's progress-display factory (streaming_executor.get_progress_manager) on a quiet console."""
    global _DatasetBar
    if _DatasetBar is None:
        _DatasetBar = _dataset_bar_class()
    return _DatasetBar(dataset_id, topology, ctx.enable_operator_progress_bars, verbose_progress)


_DatasetBar: Any = None


def _dataset_bar_class() -> type:
    """The display class, built on first use: its base class comes from Ray Data, imported only with Ray."""
    from ray.data._internal.progress.base_progress import NoopExecutionProgressManager

    class DatasetBar(NoopExecutionProgressManager):
        """One bar for a Ray Data execution, labelled with the stage: the mean completion of its operators (rows
        out of each operator's estimated total), with an ETA. A dataset done within 2 s shows nothing."""

        def __init__(self, dataset_id: str, topology: Any, show_op_progress: bool, verbose_progress: bool) -> None:
            super().__init__(dataset_id, topology, show_op_progress, verbose_progress)  # sub-bars: no-ops
            self._done: dict[int, float] = {}
            self._bar = progress_bar(_stage, 100, unit="%", delay=2.0,
                                     bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

        def update_operator_progress(self, opstate: Any, resource_manager: Any) -> None:
            op = opstate.op
            total = op.num_output_rows_total()
            if op.has_execution_finished():
                self._done[id(opstate)] = 1.0
            else:
                self._done[id(opstate)] = min(op.metrics.row_outputs_taken / total, 1.0) if total else 0.0

        def refresh(self) -> None:
            if self._done:
                percent = 100.0 * sum(self._done.values()) / len(self._done)
                self._bar.update(max(percent - self._bar.n, 0.0))  # estimates move: never go back

        def close_with_finishing_description(self, desc: str, success: bool) -> None:
            if success:
                self._bar.update(100.0 - self._bar.n)
            if self._bar.format_dict["elapsed"] >= self._bar.delay:
                self._bar.refresh()  # the final state, also when no redraw was due yet (off a terminal)
            self._bar.close()

    return DatasetBar


def route_worker_output() -> None:
    """After `ray.init`: forwarded worker output to the log file, and to the console only when it matters."""
    if not quiet():
        return
    import ray._private.worker as ray_worker

    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    names = [name for name, _ in dispatcher.handlers]
    if "ray_print_logs" not in names:
        return  # log_to_driver=False, or not a driver
    original = dict(dispatcher.handlers)["ray_print_logs"]
    dispatcher.remove_handler("ray_print_logs")
    if _HANDLER_NAME not in names:
        dispatcher.add_handler(_HANDLER_NAME, lambda data: _forward(data, original))


def _worker_line_level(line: str, source: str) -> int:
    """How a line a Ray worker printed is logged: WARNING reaches the console, INFO only the file."""
    if any(s in line for s in NOT_ACTIONABLE):
        return logging.INFO
    if source == "TrainController":  # prints WARNING and above only (train_log_level), with no level mark
        return logging.WARNING
    py_warning = _PY_WARNING.match(line)
    if py_warning:
        return logging.INFO if _is_library(py_warning[1]) else logging.WARNING
    return logging.WARNING if _MARKED.search(line) else logging.INFO


def _forward(data: Mapping[str, Any], original: Any) -> None:
    """Our handler of one batch of worker output (Ray's dispatcher calls it from its log thread)."""
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    pid = data.get("pid")
    if pid in ("raylet", "autoscaler"):
        original(data)  # cluster events (a worker killed for memory, an unschedulable request): as Ray prints them
        return
    source = data.get("actor_name") or data.get("task_name") or ""
    prefix = f"({source} pid={pid}) " if source else f"(pid={pid}) "
    logger = logging.getLogger(WORKER_LOGGER)
    lines = [line for line in data.get("lines") or [] if line.strip() and RAY_TQDM_MAGIC not in line]
    # A traceback (Ray prints it in one batch) is shown whole, unless its exception is a known harmless one.
    start = next((i for i, line in enumerate(lines) if line.startswith(_TRACEBACK)), len(lines))
    harmless = any(s in line for line in lines[start:] for s in NOT_ACTIONABLE)
    for i, line in enumerate(lines):
        level = _worker_line_level(line, source) if i < start else logging.INFO if harmless else logging.WARNING
        logger.log(level, "%s%s", prefix, line)


# ---- Ray Train workers --------------------------------------------------------------------------------------

class _MarkedFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname} {record.name}: {message}"


def mark_worker_warnings() -> None:
    """On a Ray Train worker: print WARNING and above as "WARNING <logger>: message".

    Ray Train's worker console handler prints the bare message, so the driver could not tell a warning from a
    progress line; with the mark it sends warnings to the console and the rest to the log file. INFO lines
    print as before. The handler is replaced (its filters kept: Ray Train's level filter for `ray.train`)
    because Ray's handler formats with a private formatter of its own."""
    replacements: dict[int, logging.Handler] = {}
    for name in ("", "ray.train"):
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if _is_console_handler(h)]:
            if isinstance(h.formatter, _MarkedFormatter):
                continue
            new = replacements.get(id(h))
            if new is None:
                new = logging.StreamHandler(sys.stderr)
                new.setLevel(h.level)
                new.setFormatter(_MarkedFormatter("%(message)s"))
                for f in h.filters:
                    new.addFilter(f)
                replacements[id(h)] = new
            logger.removeHandler(h)
            logger.addHandler(new)


__all__ = ["CONSOLE", "NOT_ACTIONABLE", "Console", "MetricsFollower", "mark_worker_warnings", "progress_bar", "quiet",
           "route_ray_logging", "route_worker_output", "set_stage", "setup_console", "train_log_level",
           "training_progress"]
