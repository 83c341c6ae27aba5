"""The quiet console (pipelines/console.py): INFO to the run's log file, actionable warnings and progress bars on
the console, Ray's per-report and per-step lines off it."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import pipelines.console as console
from pipelines.console import CONSOLE, MetricsFollower, setup_console


@pytest.fixture
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """setup_console changes process-wide state: the root logger, sys.stdout, warnings.showwarning."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    monkeypatch.setattr(console, "_console", None)
    root.handlers = []
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers, root.level = handlers, level


def quiet(tmp_path: Path, **settings: object) -> Path:
    log_file = setup_console({"paths": {"root": str(tmp_path)}, "console": {"verbose": False, **settings}}, "job")
    assert log_file == tmp_path / "logs" / "job.log"
    return log_file


def test_info_goes_to_the_log_file_and_actionable_warnings_to_the_console(
        clean_logging: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_file = quiet(tmp_path)
    log = logging.getLogger("pipelines.something")
    log.info("tokenized 845 samples")
    log.warning("3 sources dropped every record")
    log.info("stage train: start", extra=CONSOLE)
    logging.getLogger("ray").warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE...")
    warnings.warn_explicit("`exclude_resources` is deprecated", DeprecationWarning,
                           f"{sys.prefix}/lib/python3.11/site-packages/ray/data/options.py", 436)
    ours = str(console.REPO_ROOT / "pipelines" / "ours.py")  # raised by our code (a file linecache cannot read)
    warnings.warn_explicit("shards are smaller than a batch", UserWarning, ours, 1)
    print("source  records")

    out, err = capsys.readouterr()
    assert err.splitlines() == [f"full log: {log_file}", "WARNING pipelines.something: 3 sources dropped every record",
                                "stage train: start", f"WARNING py.warnings: {ours}:1: UserWarning: "
                                "shards are smaller than a batch"]
    assert out == "source  records\n"
    text = log_file.read_text()
    for line in ("[pipelines.something][INFO] - tokenized 845 samples", "3 sources dropped every record",
                 "Token authentication is enabled", "DeprecationWarning: `exclude_resources` is deprecated",
                 "shards are smaller than a batch", "source  records"):
        assert line in text


def test_verbose_keeps_every_line_on_the_console(clean_logging: None, tmp_path: Path) -> None:
    hydra_console = logging.StreamHandler(stream := _Stream())
    logging.getLogger().addHandler(hydra_console)
    setup_console({"paths": {"root": str(tmp_path)}, "console": {"verbose": True}}, "job")
    logging.getLogger("pipelines.something").info("tokenized 845 samples")
    assert "tokenized 845 samples" in stream.text and console.train_log_level() == "INFO"


def test_the_ray_train_controller_prints_warnings_only(clean_logging: None, tmp_path: Path) -> None:
    """Ray Train filters its `ray.train` console by RunConfig.logging_config, which workflows/train.py sets from
    the console: the controller's INFO lines stay in Ray's session logs."""
    from ray.train.v2._internal.logging.logging import TrainLogLevelFilter

    quiet(tmp_path)
    level_filter = TrainLogLevelFilter(console.train_log_level())
    record = logging.LogRecord("ray.train.v2._internal.execution.controller.controller", logging.INFO, __file__, 1,
                               "Requesting resources: {'CPU': 0.5} * 1", None, None)
    assert not level_filter.filter(record)
    record.levelno = logging.WARNING
    assert level_filter.filter(record)


def test_worker_output_goes_to_the_file_and_only_what_matters_to_the_console(
        clean_logging: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_file = quiet(tmp_path)
    capsys.readouterr()
    raylet: list[dict] = []
    site = f"{sys.prefix}/lib/python3.11/site-packages/torch/nn/modules/module.py"
    batches = [
        ("RayTrainWorker", ["step 1/20 ep 0 | loss 17.6003 | 224 tok/s | eta 0:03:02",
                            "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'step': 10})",
                            "WARNING ttt_model.training.loop: epoch 1: a rank ran out of data after 3 of 5 steps",
                            '{"__ray_tqdm_magic_token__": true, "x": 1}']),
        ("TrainController", ["Worker group failed; restarting from the latest checkpoint",
                             "[2026-12-05 15:21:07,513 E 15280 15319] core_worker.cc:2465: Actor with class name: "
                             "'PreemptionWatcher' has constructor arguments in the object store and max_restarts > 0"]),
        ("SplitCoordinator", ["Starting execution of Dataset train_1.", f"{site}:12: UserWarning: TypedStorage"]),
        ("MapWorker(MapBatches(Encode))", ["Exception in thread Monitor:", "Traceback (most recent call last):",
                                           '  File "x.py", line 1, in run', "OSError: No space left on device"]),
        ("PlacementGroupCleaner", ["Traceback (most recent call last):", '  File "y.py", line 2, in loop',
                                   "ConnectionError: Found multiple active Ray instances: {'a:1', 'b:2'}."]),
    ]
    for actor, lines in batches:
        console._forward({"pid": 7, "actor_name": actor, "lines": lines}, raylet.append)
    console._forward({"pid": "raylet", "lines": ["A worker was killed due to memory pressure"]}, raylet.append)

    assert capsys.readouterr().err.splitlines() == [
        "(RayTrainWorker pid=7) WARNING ttt_model.training.loop: epoch 1: a rank ran out of data after 3 of 5 steps",
        "(TrainController pid=7) Worker group failed; restarting from the latest checkpoint",
        "(MapWorker(MapBatches(Encode)) pid=7) Traceback (most recent call last):",  # shown whole ...
        '(MapWorker(MapBatches(Encode)) pid=7)   File "x.py", line 1, in run',
        "(MapWorker(MapBatches(Encode)) pid=7) OSError: No space left on device"]  # ... unless known harmless
    assert [d["lines"] for d in raylet] == [["A worker was killed due to memory pressure"]]  # printed by Ray
    text = log_file.read_text()
    assert "(RayTrainWorker pid=7) step 1/20 ep 0 | loss 17.6003" in text and "TypedStorage" in text
    assert "(RayTrainWorker pid=7) Reporting training result 1: TrainingReport(" in text  # a line per report
    assert "core_worker.cc" in text and "magic" not in text and 'File "y.py", line 2, in loop' in text


def test_training_warnings_are_marked_on_the_worker(clean_logging: None) -> None:
    from ray._private.log import PlainRayHandler

    ray_console = PlainRayHandler()  # what Ray Train gives a worker's root and ray.train loggers
    for name in ("", "ray.train"):
        logging.getLogger(name).addHandler(ray_console)
    try:
        console.mark_worker_warnings()
        [marked] = logging.getLogger("ray.train").handlers
        assert marked is not ray_console and marked in logging.getLogger().handlers  # one handler, as before
        assert ray_console not in logging.getLogger().handlers
        info = logging.LogRecord("ttt_model.training.telemetry", logging.INFO, __file__, 1, "step 1/20", None, None)
        warning = logging.LogRecord("ttt_model.training.loop", logging.WARNING, __file__, 1, "resuming", None, None)
        assert marked.format(info) == "step 1/20"
        assert marked.format(warning) == "WARNING ttt_model.training.loop: resuming"
    finally:
        logging.getLogger("ray.train").handlers = []


def test_the_training_bar_shows_loss_tokens_per_second_and_eta(
        clean_logging: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quiet(tmp_path, progress_interval_s=0)  # not a terminal: a plain line per redraw
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 3, "loss": 9.0}) + "\n")  # an earlier run's records: not this run's
    capsys.readouterr()
    follower = MetricsFollower(metrics, total_steps=20)
    os.replace(_jsonl(tmp_path / "rewound", [1, 2]), metrics)  # resumed at step 2: the file is rewritten
    follower.poll()
    with metrics.open("a") as f:
        f.write("\n".join(json.dumps({"step": s, "loss": 20.0 / s, "tokens_per_s": 1500.0 + s}) for s in (3, 4, 5)))
    follower.poll()  # the last record is not complete (no newline yet)
    with metrics.open("a") as f:
        f.write("\n")
    follower.close()
    lines = capsys.readouterr().err.splitlines()
    # the bar starts at the first record of this run (step 3 done: the rewound steps 1-2 are not read) ...
    assert lines[0].startswith("train steps:  15%|") and " 3/20 [" in lines[0]
    assert " 4/20 [" in lines[1] and "loss=5.000, tok/s=1,504]" in lines[1]
    assert " 5/20 [" in lines[-1] and "loss=4.000, tok/s=1,505]" in lines[-1]  # ... and ends at the last one
    elapsed, remaining = lines[-1].split(" 5/20 [")[1].split(",")[0].split("<")
    assert elapsed == "00:00" and remaining == "00:00"  # the ETA


def _jsonl(path: Path, steps: list[int]) -> Path:
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in steps))
    return path


class _Stream:
    """A text stream that keeps what was written."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_a_ray_data_execution_shows_one_bar_labelled_with_the_stage(
        clean_logging: None, ray_local: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import ray.data
    from ray.data._internal.execution import streaming_executor

    monkeypatch.setattr(streaming_executor, "get_progress_manager", streaming_executor.get_progress_manager)
    for name in ("ray", "ray.data"):  # route_ray_logging hands them to the root logger
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "propagate", logger.propagate)
    log_file = quiet(tmp_path, progress_interval_s=1)
    console.route_ray_logging()
    console.set_stage("tokenize")
    capsys.readouterr()

    def slow(batch: dict) -> dict:
        import time

        time.sleep(0.1)
        return batch

    assert ray.data.range(60, override_num_blocks=12).map_batches(slow, batch_size=5).materialize().count() == 60
    console.set_stage("evaluate")
    assert ray.data.range(4, override_num_blocks=1).materialize().count() == 4  # under 2 s: no bar
    err = capsys.readouterr().err.splitlines()
    assert err and all(line.startswith("tokenize: ") for line in err), err  # nothing else, no "evaluate" bar
    assert err[-1].startswith("tokenize: 100%|") and err[-1].endswith("<00:00]")
    assert "Starting execution of Dataset" in log_file.read_text()  # Ray Data's INFO: in the log file
