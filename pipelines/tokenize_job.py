"""The tokenize job: configured corpora -> Parquet + WebDataset shards, with quarantine and counts.

Two phases, both Ray Data:

1. *Stage* (the expensive part). Units listed on the driver -> `read_units` -> `decode_audio` ->
   `Synthesize` (actor pool) -> `Encode` (codec actor pool, GPUs in production) -> `build_rows` ->
   one row per record in `_staging/<fingerprint>/rows/*.parquet`, whatever its status.
2. *Finalize* (cheap: no audio). Staged rows are hash-partitioned by record id into
   N = ceil(samples / rows_per_shard) shards (two map stages through a spill directory, see the
   section comment below); each shard is sorted by sample_id and written to Parquet + WebDataset;
   quarantine rows likewise. Counts come from DuckDB over the staged rows and the written shards, and go
   to manifest.json with the vocabulary manifest. Everything is written under
   `_staging/<fingerprint>/final/` and moved into place at the end.

Why resumable this way, and not with Ray Data's checkpointing (beta): its filter runs on the Read
operator's output and needs the id column there, but our ids only exist after the readers expand
units into records; and its output files depend on task scheduling, while these shards must be byte
identical across runs. Instead every staged file appears by atomic rename, so a run killed at any
point leaves only complete files; the next run skips the records they hold (a sorted set of 16-byte
record keys, checked in `read_units` before any decoding), finalize skips shards that already exist,
and the final move is idempotent. The same input always gives the same shards because shard
membership depends only on record ids and each shard is sorted, not on execution order (so
`preserve_order`, which would stall the streaming executor, is not needed).

The fingerprint (sources, vocabulary manifest, content-affecting settings, job format) names the
staging directory: staging of a different configuration is never reused. Two jobs must not write the
same `paths.shards` at once.

Ray Data waits silently, and forever, for resources it cannot get. So the actor pools are sized against the
cluster's CPUs before the stage phase (`size_pools`: at least one CPU stays with the tasks), and each phase runs
under a watchdog (`watch_phase`) that warns when no staged file has appeared for data.job.stall_warn_seconds and
fails the job after data.job.stall_fail_seconds, naming the phase and the free resources.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from pipelines import quarantine as q
from pipelines.duck import sql_literal
from pipelines.ray_runtime import ensure_ray
from pipelines.records import SourceConfig
from pipelines.shards import (
    expand_copies,
    num_parts,
    part_of,
    write_parquet_shard,
    write_quarantine_part,
    write_wds_shard,
)
from pipelines.tasks import IMPORT_KINDS
from pipelines.text_vocab import TEXT_VOCABS, corpus_text_tokenizer
from tokenization.codecs.base import CodecIdentity
from tokenization.codecs.declared import KIND as DECLARED_KIND
from tokenization.shard_format import MANIFEST_FILE, PARQUET_DIR, QUARANTINE_DIR, WDS_DIR, shard_name
from tokenization.vocab import UnifiedVocab, read_manifest, write_manifest
from ttt_common.config_tools import config_digest
from ttt_common.files import atomic_write

JOB_FORMAT = 2  # bump when staged or shard content changes for the same configuration
STAGING_DIR = "_staging"
SHARD_STATS_KEY = b"ttt.shard_stats"
MIB = 1 << 20
TASK_CPUS = 1.0  # what a read/decode/build/write task asks of Ray (Ray Data's default); one must fit beside the pools
log = logging.getLogger(__name__)


class JobConfigError(ValueError):
    """The job cannot start: bad settings, unknown source kinds, missing corpora (all listed at once)."""


# ---- settings ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobSettings:
    """Everything the job reads from the config, checked before any work starts."""

    shards_dir: Path
    sources: tuple[SourceConfig, ...]
    codec: Mapping[str, Any]
    text_tokenizer: str = "bundled:qwen"
    layout: str = "compact"
    text_vocab: str = "full"  # full | corpus (pipelines.text_vocab)
    text_subset: tuple[int, ...] = ()  # set by run_tokenize_job when text_vocab is corpus
    max_seconds: float = 30.0
    too_long: str = "split"
    min_seconds: float = 0.1
    max_chars_per_second: float | None = 30.0
    max_sample_tokens: int | None = None
    tts_voice: str = "piper:joe"
    tts_voices: Mapping[str, str] | None = None
    tts_max_chars: int = 2000
    tts_pool: int = 1
    tts_num_cpus: float = 1.0
    tts_memory_mb: int = 768
    encode_pool: int = 1
    encode_batch_rows: int = 32
    encode_max_batch_seconds: float = 120.0
    encode_num_gpus: float = 0.0
    encode_num_cpus: float = 1.0
    encode_memory_mb: int = 1024
    rows_per_block: int = 32
    staging_rows_per_file: int = 256
    finalize_rows_per_task: int = 20000
    rows_per_shard: int = 5000
    row_group_rows: int = 512
    webdataset: bool = True
    compression: str = "zstd"
    num_cpus: int = 4
    address: str | None = None
    object_store_gb: float = 2.0
    stall_warn_seconds: float = 300.0
    stall_fail_seconds: float = 1800.0
    force: bool = False

    def content(self) -> dict[str, Any]:
        """Settings that change what is staged or written (the fingerprint's input)."""
        return {
            "sources": [asdict(s) for s in self.sources], "max_seconds": self.max_seconds,
            "too_long": self.too_long, "min_seconds": self.min_seconds,
            "max_chars_per_second": self.max_chars_per_second, "max_sample_tokens": self.max_sample_tokens,
            "tts_voice": self.tts_voice, "tts_voices": dict(self.tts_voices or {}),
            "tts_max_chars": self.tts_max_chars, "rows_per_shard": self.rows_per_shard,
            "row_group_rows": self.row_group_rows, "webdataset": self.webdataset, "compression": self.compression,
        }


def _optional(value: Any, type_: Callable[[Any], Any]) -> Any:
    """A setting that may be null (no limit)."""
    return None if value is None else type_(value)


def _section(cfg: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    node: Any = cfg
    for k in keys:
        node = node.get(k) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def load_sources(data: Mapping[str, Any]) -> list[SourceConfig]:
    """`data.sources_file` (a YAML list, or a mapping with a `sources` list, or the reference implementation's
    data_config JSON: pipelines/reference_format.py) when set, else `data.sources`."""
    from pipelines.reference_format import is_data_config, sources_from_data_config

    sources_file = data.get("sources_file")
    if sources_file:
        path = Path(str(sources_file)).expanduser()
        if not path.is_file():
            raise JobConfigError(f"data.sources_file: {path} does not exist")
        text = path.read_text(encoding="utf-8")
        try:  # JSON may be tab-indented, which YAML refuses
            loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise JobConfigError(f"data.sources_file: {path} does not parse: {e}") from None
        entries = loaded.get("sources") if isinstance(loaded, Mapping) else loaded
        where = str(path)
        if is_data_config(entries):
            try:
                entries = sources_from_data_config(entries, path.absolute().parent)
            except ValueError as e:
                raise JobConfigError(f"{where}: {e}") from None
    else:
        entries, where = data.get("sources"), "data.sources"
    if not isinstance(entries, Sequence) or isinstance(entries, str) or not entries:
        raise JobConfigError(f"{where}: expected a non-empty list of sources {{kind, path, name, task, ...}}")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise JobConfigError(f"{where}[{i}]: expected a mapping, got {entry!r}")
        try:
            out.append(SourceConfig.from_mapping(entry))
        except (ValueError, TypeError) as e:
            raise JobConfigError(f"{where}[{i}]: {e}") from None
    return out


def settings_from_config(cfg: Mapping[str, Any]) -> JobSettings:
    data = _section(cfg, "data")
    audio, tts, enc = _section(data, "audio"), _section(data, "tts"), _section(data, "encode")
    shards, job = _section(data, "shards"), _section(data, "job")
    shards_dir = _section(cfg, "paths").get("shards")
    if not shards_dir:
        raise JobConfigError("paths.shards is not set")
    codec = dict(_section(cfg, "codec"))
    if not codec:
        raise JobConfigError("no codec config (compose a codec group, e.g. codec=embedded)")
    num_gpus = enc.get("num_gpus")
    if num_gpus is None:  # auto: one GPU per codec actor when the codec runs on CUDA
        num_gpus = 1.0 if str(codec.get("device", "cpu")).startswith("cuda") else 0.0
    defaults = JobSettings(Path(), (), {})
    s = JobSettings(
        shards_dir=Path(str(shards_dir)),
        sources=tuple(load_sources(data)),
        codec=codec,
        text_tokenizer=str(data.get("text_tokenizer") or defaults.text_tokenizer),
        layout=str(data.get("vocab_layout") or defaults.layout),
        text_vocab=str(data.get("text_vocab") or defaults.text_vocab),
        max_seconds=float(audio.get("max_seconds", defaults.max_seconds)),
        too_long=str(audio.get("too_long", defaults.too_long)),
        min_seconds=float(audio.get("min_seconds", defaults.min_seconds)),
        max_chars_per_second=_optional(audio.get("max_chars_per_second", defaults.max_chars_per_second), float),
        max_sample_tokens=_optional(data.get("max_sample_tokens", defaults.max_sample_tokens), int),
        tts_voice=str(tts.get("voice", defaults.tts_voice)),
        tts_voices=dict(tts.get("voices") or {}),
        tts_max_chars=int(tts.get("max_chars", defaults.tts_max_chars)),
        tts_pool=int(tts.get("pool_size", defaults.tts_pool)),
        tts_num_cpus=float(tts.get("num_cpus", defaults.tts_num_cpus)),
        tts_memory_mb=int(tts.get("memory_mb", defaults.tts_memory_mb)),
        encode_pool=int(enc.get("pool_size", defaults.encode_pool)),
        encode_batch_rows=int(enc.get("batch_rows", defaults.encode_batch_rows)),
        encode_max_batch_seconds=float(enc.get("max_batch_seconds", defaults.encode_max_batch_seconds)),
        encode_num_gpus=float(num_gpus),
        encode_num_cpus=float(enc.get("num_cpus", defaults.encode_num_cpus)),
        encode_memory_mb=int(enc.get("memory_mb", defaults.encode_memory_mb)),
        rows_per_block=int(job.get("rows_per_block", defaults.rows_per_block)),
        staging_rows_per_file=int(job.get("staging_rows_per_file", defaults.staging_rows_per_file)),
        finalize_rows_per_task=int(job.get("finalize_rows_per_task", defaults.finalize_rows_per_task)),
        rows_per_shard=int(shards.get("rows_per_shard", defaults.rows_per_shard)),
        row_group_rows=int(shards.get("row_group_rows", defaults.row_group_rows)),
        webdataset=bool(shards.get("webdataset", defaults.webdataset)),
        compression=str(shards.get("compression", defaults.compression)),
        num_cpus=int(job.get("num_cpus", defaults.num_cpus)),
        address=job.get("address") or None,
        object_store_gb=float(job.get("object_store_gb", defaults.object_store_gb)),
        stall_warn_seconds=float(job.get("stall_warn_seconds", defaults.stall_warn_seconds)),
        stall_fail_seconds=float(job.get("stall_fail_seconds", defaults.stall_fail_seconds)),
        force=bool(cfg.get("force", False)),
    )
    problems = []
    if s.text_vocab not in TEXT_VOCABS:
        problems.append(f"data.text_vocab must be one of {'|'.join(TEXT_VOCABS)}, got {s.text_vocab!r}")
    elif s.text_vocab == "corpus" and s.layout != "compact":
        problems.append("data.text_vocab=corpus needs data.vocab_layout=compact (the reference layout fixes "
                        "the full Qwen ids)")
    if s.too_long not in ("split", "quarantine"):
        problems.append(f"data.audio.too_long must be split|quarantine, got {s.too_long!r}")
    for name in ("max_seconds", "min_seconds", "tts_max_chars", "tts_pool", "tts_memory_mb", "encode_pool",
                 "encode_memory_mb", "encode_batch_rows", "encode_max_batch_seconds", "rows_per_block",
                 "staging_rows_per_file", "finalize_rows_per_task", "rows_per_shard", "row_group_rows", "num_cpus",
                 "stall_warn_seconds", "stall_fail_seconds"):
        if getattr(s, name) <= 0:
            problems.append(f"{name} must be positive, got {getattr(s, name)}")
    for name in ("max_chars_per_second", "max_sample_tokens"):
        if getattr(s, name) is not None and getattr(s, name) <= 0:
            problems.append(f"{name} must be positive or null (no limit), got {getattr(s, name)}")
    if s.min_seconds >= s.max_seconds:
        problems.append(f"data.audio.min_seconds={s.min_seconds} must be below data.audio.max_seconds={s.max_seconds}")
    if s.stall_warn_seconds > s.stall_fail_seconds:
        problems.append(f"data.job.stall_warn_seconds={s.stall_warn_seconds:g} must not exceed "
                        f"data.job.stall_fail_seconds={s.stall_fail_seconds:g}")
    if not can_encode(codec):
        problems += [f"source {src.source_name!r} ({src.kind}) has audio to encode, but codec {codec.get('name')!r} "
                     "is declared (no weights): configure the real codec, or list only sources that are already "
                     f"codes ({', '.join(IMPORT_KINDS)})" for src in s.sources if src.kind not in IMPORT_KINDS]
    if problems:
        raise JobConfigError("; ".join(problems))
    return s


def plan_sources(sources: Sequence[SourceConfig]) -> list[list[str]]:
    """Validate every source (kind, path, layout, ratio, unique names) and list its units, reporting all
    problems in one error before any work starts."""
    from pipelines.readers import get_reader

    problems: list[str] = []
    units: list[list[str]] = []
    names = [s.source_name for s in sources]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"source name {dup!r} used twice (names prefix record ids; set `name:`)")
    for s in sources:
        try:
            if s.ratio < 0:
                raise ValueError(f"ratio must be >= 0, got {s.ratio}")
            reader = get_reader(s.kind)
            reader.validate(s)
            found = reader.units(s)
            if not found:
                raise ValueError(f"no readable units under {s.path}")
            units.append(list(found))
        except (ValueError, FileNotFoundError, OSError) as e:
            problems.append(f"source {s.source_name!r} ({s.kind}, {s.path}): {e}")
            units.append([])
    if problems:
        raise JobConfigError("invalid data sources:\n  " + "\n  ".join(problems))
    return units


def fingerprint(settings: JobSettings, vocab_manifest: Mapping[str, Any]) -> str:
    payload = {"job_format": JOB_FORMAT, "settings": settings.content(), "vocab": vocab_manifest}
    return config_digest(payload)


# ---- run directory layout ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunLayout:
    shards_dir: Path
    fingerprint: str

    @property
    def staging(self) -> Path:
        return self.shards_dir / STAGING_DIR / self.fingerprint[:16]

    @property
    def rows(self) -> Path:
        return self.staging / "rows"

    @property
    def rows_done(self) -> Path:
        return self.staging / "rows.done"

    @property
    def final(self) -> Path:
        return self.staging / "final"

    @property
    def spill_done(self) -> Path:
        return self.staging / "spill.done"

    def prepare(self, force: bool) -> None:
        """Drop staging of other configurations (and of this one when forced) and partial files."""
        root = self.shards_dir / STAGING_DIR
        if root.is_dir():
            for d in root.iterdir():
                if d != self.staging or force:
                    shutil.rmtree(d)
        self.rows.mkdir(parents=True, exist_ok=True)
        for tmp in self.staging.rglob(".*.tmp"):
            tmp.unlink()


# ---- phase 1: stage ------------------------------------------------------------------------------------

def can_encode(codec: Mapping[str, Any]) -> bool:
    """Whether the configured codec can turn audio into codes. A declared codec (the identity of pre-coded
    data, without weights) cannot, so the job starts neither speech-synthesis nor codec actors, and
    `settings_from_config` admits only sources whose audio is already codes."""
    return codec.get("kind") != DECLARED_KIND


def needs_speech(sources: Sequence[SourceConfig]) -> bool:
    """Whether any source can need TTS (otherwise the TTS actor pool is left out of the pipeline)."""
    from pipelines.readers import get_reader
    from pipelines.tasks import may_need_speech

    return any(may_need_speech(s.kind, s.task or get_reader(s.kind).default_task) for s in sources)


def actor_pools(settings: JobSettings) -> dict[str, tuple[int, float]]:
    """The actor pools the stage phase starts, by config section: (actors, CPUs each). No pools with a declared
    codec; no speech-synthesis pool when no source can need speech."""
    if not can_encode(settings.codec):
        return {}
    pools = {"encode": (settings.encode_pool, settings.encode_num_cpus)}
    if needs_speech(settings.sources):
        pools = {"tts": (settings.tts_pool, settings.tts_num_cpus), **pools}
    return pools


def size_pools(settings: JobSettings, cluster_cpus: float) -> JobSettings:
    """Pool sizes that leave the read/decode/build/write tasks at least one CPU of `cluster_cpus`.

    Actor pools hold their CPUs for the whole stage phase, and Ray Data's streaming executor waits, silently and
    forever, for a task that cannot get a CPU ("Active & requested resources: 3/2 CPU" with two 0.5-CPU speech
    actors and a 1-CPU codec actor on 2 CPUs). A pool's size only sets throughput (the shards do not depend on
    it), so pools are shrunk one actor at a time, the pool holding the most CPUs first, with a warning. The CPUs
    of one actor are the user's statement of what its model needs, so when even one actor per pool leaves no
    CPU for the tasks, the job refuses to start (JobConfigError) and names the settings to change."""
    pools = actor_pools(settings)
    sizes = {name: size for name, (size, _) in pools.items()}

    def reserved() -> float:
        return sum(sizes[name] * cpus for name, (_, cpus) in pools.items())

    configured = reserved()
    while cluster_cpus - reserved() < TASK_CPUS:
        shrinkable = [name for name, (_, cpus) in pools.items() if sizes[name] > 1 and cpus > 0]
        if not shrinkable:
            held = ", ".join(f"data.{name}: 1 actor x {cpus:g} CPU" for name, (_, cpus) in pools.items())
            raise JobConfigError(
                f"the Ray cluster has {cluster_cpus:g} CPUs (data.job.num_cpus for a local one), but the actor pools "
                f"hold {reserved():g} of them for the whole stage phase even at one actor each ({held}), leaving "
                f"{cluster_cpus - reserved():g} < {TASK_CPUS:g} CPU for the read/decode/build tasks: Ray Data would "
                f"wait forever. Raise data.job.num_cpus to at least {reserved() + TASK_CPUS:g} (logical CPUs; more "
                "than the machine's cores is fine), or lower data.tts.num_cpus / data.encode.num_cpus")
        name = max(shrinkable, key=lambda n: sizes[n] * pools[n][1])
        sizes[name] -= 1
    if reserved() == configured:
        return settings
    log.warning("the actor pools as configured would hold %g of the Ray cluster's %g CPUs for the whole stage "
                "phase, leaving under %g CPU for the read/decode/build tasks (Ray Data would wait forever); running "
                "%s instead (raise data.job.num_cpus to run them as configured)", configured, cluster_cpus, TASK_CPUS,
                ", ".join(f"data.{name}.pool_size={sizes[name]} (configured {size})"
                          for name, (size, _) in pools.items() if sizes[name] != size))
    return replace(settings, tts_pool=sizes.get("tts", settings.tts_pool),
                   encode_pool=sizes.get("encode", settings.encode_pool))


# ---- stall watchdog ------------------------------------------------------------------------------------

_stall_reasons: dict[int, str] = {}  # thread id -> why the watchdog stopped the job running in that thread


class JobStalledError(RuntimeError):
    """A phase of the job made no progress for data.job.stall_fail_seconds.

    `watching` raises it inside the job's thread, as a class (that is all CPython can raise asynchronously), so
    the message is looked up here, from what the watchdog recorded for the thread it is raised in."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or _stall_reasons.get(threading.get_ident(), "the tokenize job made no progress"))


class StallWatchdog:
    """Decides, poll by poll, whether a phase of the job has stalled.

    `progress()` returns anything that changes while the phase works (here: the number of complete files in the
    staging directory); `describe()` the resources, for the messages. After `warn_s` without a change it logs a
    warning naming the phase and the resources (again every `warn_s`); after `fail_s`, `check` returns the reason
    to fail the job with. The clock is injected, so the decision is tested without waiting minutes."""

    def __init__(self, phase: str, progress: Callable[[], object], describe: Callable[[], str], warn_s: float,
                 fail_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.phase, self.progress, self.describe = phase, progress, describe
        self.warn_s, self.fail_s, self.clock = warn_s, fail_s, clock
        self._value, self._since, self._next_warning = progress(), clock(), warn_s

    def _resources(self) -> str:
        try:
            return self.describe()
        except Exception as exc:  # a message must not fail for want of its details
            return f"resources unknown ({q.error_detail(exc)})"

    def check(self) -> str | None:
        """One poll: None while the phase makes progress or has not stalled for `fail_s`, else the reason."""
        now, value = self.clock(), self.progress()
        if value != self._value:
            self._value, self._since, self._next_warning = value, now, self.warn_s
            return None
        idle = now - self._since
        if idle >= self.fail_s:
            return (f"{self.phase} made no progress for {idle:.0f} s (data.job.stall_fail_seconds="
                    f"{self.fail_s:g}); {self._resources()}")
        if idle >= self._next_warning:
            log.warning("%s has made no progress for %.0f s; %s. The job fails after data.job.stall_fail_seconds=%g "
                        "without progress", self.phase, idle, self._resources(), self.fail_s)
            self._next_warning += self.warn_s
        return None


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise `exc_type` in another thread at its next Python instruction; None withdraws one not yet raised."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               None if exc_type is None else ctypes.py_object(exc_type))


@contextlib.contextmanager
def watching(watchdog: StallWatchdog, poll_s: float) -> Iterator[None]:
    """Poll `watchdog` in a thread while the body runs; when it reports a stall, raise JobStalledError in the body.

    Raised asynchronously in the body's own thread (which need not be the main thread): the body waits inside
    Ray Data's consumer loop, which sleeps in 10 ms steps and shuts the execution down, actor pools included,
    on any exception there, exactly as on Ctrl-C. A stall found just as the body ends is withdrawn."""
    target, stop, lock = threading.get_ident(), threading.Event(), threading.Lock()

    def loop() -> None:
        while not stop.wait(poll_s):
            reason = watchdog.check()
            if reason:
                with lock:
                    if not stop.is_set():
                        _stall_reasons[target] = reason
                        _raise_in_thread(target, JobStalledError)
                return

    thread = threading.Thread(target=loop, name=f"stall watchdog: {watchdog.phase}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with lock:
            stop.set()
            _raise_in_thread(target, None)
        thread.join()
        _stall_reasons.pop(target, None)


def _complete_files(directory: Path) -> int:
    """Complete Parquet files under `directory` (staged rows, spill parts, shards: each appears by an atomic
    rename): what the watchdog takes as progress."""
    return sum(1 for _ in directory.rglob("*.parquet"))


def _resources(pools: Mapping[str, tuple[int, float]]) -> str:
    """The cluster's free and total resources and what the actor pools hold, for the watchdog's messages."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    have = [f"{key} {free.get(key, 0.0):g} free of {total[key]:g}" for key in ("CPU", "GPU") if key in total]
    if "memory" in total:
        have.append(f"memory {free.get('memory', 0.0) / (1 << 30):.1f} GiB free of {total['memory'] / (1 << 30):.1f}")
    held = "; actor pools hold " + ", ".join(f"data.{name}: {size} x {cpus:g} CPU"
                                             for name, (size, cpus) in pools.items()) if pools else ""
    return f"Ray cluster: {', '.join(have)}{held}"


def watch_phase(settings: JobSettings, phase: str, layout: RunLayout,
                pools: Mapping[str, tuple[int, float]]) -> contextlib.AbstractContextManager[None]:
    """The stall watchdog of one phase (progress: complete files in the staging directory)."""
    watchdog = StallWatchdog(phase, lambda: _complete_files(layout.staging), lambda: _resources(pools),
                             settings.stall_warn_seconds, settings.stall_fail_seconds)
    return watching(watchdog, poll_s=min(10.0, settings.stall_warn_seconds / 10))


def stage_records(settings: JobSettings, units: Sequence[Sequence[str]], identity: CodecIdentity,
                  layout: RunLayout) -> int:
    """Phase 1; returns how many records an interrupted earlier run had already staged."""
    import ray
    import ray.data

    from pipelines.tokenize_stages import (
        Encode,
        StagingSink,
        Synthesize,
        build_rows,
        decode_audio,
        read_units,
        staged_keys,
        without_codes,
    )

    done = staged_keys(layout.rows)
    if len(done):
        log.info("resuming: %d records already staged in %s", len(done), layout.rows)
    items = [{"source_index": i, "unit": u} for i, us in enumerate(units) for u in us]
    sources = [asdict(s) for s in settings.sources]
    block = settings.rows_per_block
    # The actor pools reserve memory for their models. Besides placing them sensibly, remote args that
    # differ from the tasks' keep Ray Data from fusing the read/decode tasks into an actor pool (fusion
    # needs equal remote args), where they would run on its few actors (or on GPU actors) instead of in
    # elastic CPU tasks.
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(read_units, batch_size=1, batch_format="pyarrow",
                        fn_kwargs={"sources": sources, "done": [ray.put(done)], "rows_per_block": block})
    ds = ds.map_batches(decode_audio, batch_size=block, batch_format="pyarrow",
                        fn_kwargs={"sample_rate": identity.sample_rate, "max_seconds": settings.max_seconds,
                                   "too_long": settings.too_long, "min_seconds": settings.min_seconds,
                                   "max_chars_per_second": settings.max_chars_per_second})
    pools = actor_pools(settings)
    if "tts" in pools:
        ds = ds.map_batches(Synthesize, batch_size=block, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=settings.tts_pool), num_cpus=settings.tts_num_cpus,
                            memory=settings.tts_memory_mb * MIB,
                            fn_constructor_kwargs={"voice": settings.tts_voice,
                                                   "voices": dict(settings.tts_voices or {}),
                                                   "sample_rate": identity.sample_rate,
                                                   "max_chars": settings.tts_max_chars})
    if "encode" in pools:
        ds = ds.map_batches(Encode, batch_size=settings.encode_batch_rows, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=settings.encode_pool),
                            num_gpus=settings.encode_num_gpus, num_cpus=settings.encode_num_cpus,
                            memory=settings.encode_memory_mb * MIB,
                            fn_constructor_kwargs={"codec_cfg": dict(settings.codec),
                                                   "sample_rate": identity.sample_rate,
                                                   "max_batch_seconds": settings.encode_max_batch_seconds})
    else:
        ds = ds.map_batches(without_codes, batch_size=block, batch_format="pyarrow")
    ds = ds.map_batches(build_rows, batch_size=block, batch_format="pyarrow",
                        fn_kwargs={"text_tokenizer": settings.text_tokenizer, "codec_identity": identity.to_dict(),
                                   "layout": settings.layout, "max_sample_tokens": settings.max_sample_tokens,
                                   "text_subset": list(settings.text_subset)})
    with watch_phase(settings, "the stage phase (read -> decode -> synthesize -> encode -> build -> staged files)",
                     layout, pools):
        ds.write_datasink(StagingSink(str(layout.rows), settings.staging_rows_per_file))
    layout.rows_done.touch()
    return len(done)


# ---- phase 2: finalize ---------------------------------------------------------------------------------
#
# Staged rows are hash-partitioned into parts through the filesystem, in two plain Ray Data map stages:
# (A) each task reads a group of staged files and writes, per part, the rows that hash to it to
# `_spill/<part>/<group>.parquet`; (B) each task reads one part's spill files and writes that shard.
# Not `groupby().map_groups()`: Ray's shuffle operators cost ~10 s per execution here (sort shuffle,
# warm cluster, 2 loaded cores; the default hash shuffle starts aggregator actors, slower still) against
# 0.25 s for these two stages, and they keep every block in the object store; here each task holds at
# most one group or one part in memory, spill names depend only on their input (a rerun rewrites the
# same files), and parts already written are skipped.

def assign_parts(batch: pa.Table, *, num_shards: int, num_quarantine: int, skip: Sequence[str]) -> pa.Table:
    """Keep ok and quarantine rows, tag each with its output part ("p00003" / "q00000"); rows of parts that
    an interrupted run already wrote are left out."""
    batch = batch.filter(pc.is_in(batch.column("status"), pa.array([q.OK, q.QUARANTINE])))
    is_ok = pc.equal(batch.column("status"), q.OK).to_numpy(zero_copy_only=False)
    keys = batch.column("record_key")
    shard = part_of(keys, num_shards)
    qpart = part_of(keys, num_quarantine)
    parts = [f"p{s:05d}" if ok else f"q{qp:05d}" for ok, s, qp in zip(is_ok, shard, qpart, strict=True)]
    batch = batch.append_column("part", pa.array(parts, pa.string()))
    return batch.filter(pc.invert(pc.is_in(batch.column("part"), pa.array(list(skip), pa.string()))))


def partition_group(batch: pa.Table, *, spill_dir: str, num_shards: int, num_quarantine: int,
                    skip: Sequence[str]) -> pa.Table:
    """Stage A, one task per group of staged files: split their rows by part into spill files named after
    the group, so a rerun overwrites rather than duplicates."""
    files = batch.column("file").to_pylist()
    group = hashlib.sha1("\n".join(files).encode()).hexdigest()[:16]
    table = pa.concat_tables([assign_parts(pq.read_table(f), num_shards=num_shards, num_quarantine=num_quarantine,
                                           skip=skip) for f in files])
    parts = sorted(set(table.column("part").to_pylist()))
    for part in parts:
        rows = table.filter(pc.equal(table.column("part"), part))
        atomic_write(Path(spill_dir) / part / f"{group}.parquet", lambda tmp, rows=rows: pq.write_table(rows, tmp))
    return pa.table({"group": [group], "parts": [len(parts)], "rows": [table.num_rows]})


def write_parts(batch: pa.Table, *, spill_dir: str, **kwargs: Any) -> pa.Table:
    """Stage B, one task per part: gather its spill files (none: an empty part) and write it."""
    from pipelines.tokenize_stages import STAGED_SCHEMA

    written = []
    for part in batch.column("part").to_pylist():
        files = sorted((Path(spill_dir) / part).glob("*.parquet"))
        rows = pa.concat_tables([pq.read_table(f) for f in files]) if files else STAGED_SCHEMA.empty_table()
        written.append(write_part_rows(part, rows, **kwargs))
    return pa.table({"part": batch.column("part"), "rows": pa.array(written, pa.int64())})


def write_part_rows(part: str, rows: pa.Table, *, final_dir: str, vocab_manifest: Mapping[str, Any],
                    num_shards: int, num_quarantine: int, row_group_rows: int, compression: str,
                    webdataset: bool) -> int:
    """Write one shard ("pKKKKK": Parquet after WebDataset, so an existing Parquet file means the shard is
    complete) or one quarantine part ("qKKKKK"); returns the rows written."""
    index, root = int(part[1:]), Path(final_dir)
    if part.startswith("q"):
        write_quarantine_part(rows, root / QUARANTINE_DIR / shard_name(index, num_quarantine, ".parquet"),
                              q.QUARANTINE_SCHEMA)
        return rows.num_rows
    samples, duplicates = expand_copies(rows)
    name = shard_name(index, num_shards, "")
    if webdataset:
        write_wds_shard(samples, root / WDS_DIR / f"{name}.tar")
    write_parquet_shard(samples, root / PARQUET_DIR / f"{name}.parquet", vocab_manifest, row_group_rows,
                        compression, extra_metadata={SHARD_STATS_KEY: {"duplicates": duplicates}})
    return samples.num_rows


def _staged_totals(layout: RunLayout) -> tuple[int, int, list[dict[str, Any]]]:
    """(samples to write, quarantine rows, counts per source/status/reason) of the staged rows."""
    if not any(layout.rows.glob("*.parquet")):
        return 0, 0, []
    with duckdb.connect() as con:
        # one row per (record, locator): a retried Ray write task may have staged a row twice
        con.execute("CREATE VIEW staged AS SELECT DISTINCT ON (record_key, locator) "
                    f"* EXCLUDE (spans, input_ids) FROM read_parquet({sql_literal(layout.rows / '*.parquet')})")
        samples, quarantined = con.sql(
            "SELECT coalesce(sum(copies) FILTER (WHERE status = 'ok'), 0), "
            "count(*) FILTER (WHERE status = 'quarantine') FROM staged").fetchall()[0]
        counts = con.sql("SELECT source, status, stage, error, drop_reason, count(*) AS n FROM staged "
                         "GROUP BY ALL ORDER BY ALL").to_arrow_table().to_pylist()
    return int(samples), int(quarantined), counts


def finalize(settings: JobSettings, vocab: UnifiedVocab, layout: RunLayout) -> dict[str, Any]:
    """Phase 2: staged rows -> final shards, quarantine parts and manifest (under `layout.final`)."""
    import ray.data

    samples, quarantined, staged_counts = _staged_totals(layout)
    n_shards = num_parts(samples, settings.rows_per_shard)
    n_quarantine = num_parts(quarantined, settings.rows_per_shard)
    expected = {f"p{i:05d}": layout.final / PARQUET_DIR / shard_name(i, n_shards, ".parquet")
                for i in range(n_shards)}
    expected |= {f"q{i:05d}": layout.final / QUARANTINE_DIR / shard_name(i, n_quarantine, ".parquet")
                 for i in range(n_quarantine)}
    done = sorted(part for part, path in expected.items() if path.is_file())
    pending = sorted(set(expected) - set(done))
    vocab_manifest = vocab.manifest()
    spill = layout.staging / "spill"
    with watch_phase(settings, "the finalize phase (partition staged rows -> write shards)", layout, {}):
        if pending and not layout.spill_done.is_file():
            files = [str(p) for p in sorted(layout.rows.glob("*.parquet"))]
            per_task = max(1, settings.finalize_rows_per_task // settings.staging_rows_per_file)
            groups = [{"file": f, "group": i // per_task} for i, f in enumerate(files)]
            if groups:
                ds = ray.data.from_items(groups, override_num_blocks=-(-len(files) // per_task))
                ds.map_batches(partition_group, batch_size=per_task, batch_format="pyarrow",
                               fn_kwargs={"spill_dir": str(spill), "num_shards": n_shards,
                                          "num_quarantine": n_quarantine, "skip": done}).materialize()
            layout.spill_done.touch()
        if pending:
            part_args = {"spill_dir": str(spill), "final_dir": str(layout.final), "vocab_manifest": vocab_manifest,
                         "num_shards": n_shards, "num_quarantine": n_quarantine,
                         "row_group_rows": settings.row_group_rows, "compression": settings.compression,
                         "webdataset": settings.webdataset}
            ray.data.from_items([{"part": p} for p in pending], override_num_blocks=len(pending)).map_batches(
                write_parts, batch_size=1, batch_format="pyarrow", fn_kwargs=part_args).materialize()
    shutil.rmtree(spill, ignore_errors=True)
    counts = collect_counts(settings, layout.final, staged_counts)
    shards_info = {
        "num_shards": n_shards, "num_quarantine_parts": n_quarantine, "rows_per_shard": settings.rows_per_shard,
        "row_group_rows": settings.row_group_rows, "webdataset": settings.webdataset,
        "parquet": [shard_name(i, n_shards, ".parquet") for i in range(n_shards)],
        "wds": [shard_name(i, n_shards, ".tar") for i in range(n_shards)] if settings.webdataset else [],
        "quarantine": [shard_name(i, n_quarantine, ".parquet") for i in range(n_quarantine)],
    }
    extra = {"fingerprint": layout.fingerprint, "job_format": JOB_FORMAT, "counts": counts, "shards": shards_info,
             "sources": [asdict(s) for s in settings.sources]}
    atomic_write(layout.final / MANIFEST_FILE, lambda tmp: write_manifest(vocab_manifest, tmp, **extra))
    return {**vocab_manifest, **extra}


# ---- counts --------------------------------------------------------------------------------------------

def _zero_counts() -> dict[str, Any]:
    return {"read": 0, "written_records": 0, "written_samples": 0, "quarantined": 0, "dropped": {},
            "tokens": 0, "text_tokens": 0, "audio_tokens": 0, "audio_hours": 0.0, "tasks": {}}


def drop_limits(settings: JobSettings) -> dict[str, str]:
    """The setting behind each drop reason that is a threshold, as the summary names it next to the count."""
    return {q.TOO_SHORT: f"below data.audio.min_seconds={settings.min_seconds:g}",
            q.TOO_FAST: f"above data.audio.max_chars_per_second={settings.max_chars_per_second}",
            q.TOO_LONG_UNALIGNED: f"transcribed audio above data.audio.max_seconds={settings.max_seconds:g}",
            q.LONGER_THAN_ROW: f"above data.max_sample_tokens={settings.max_sample_tokens}",
            "tts_too_long": f"above data.tts.max_chars={settings.tts_max_chars}"}


def collect_counts(settings: JobSettings, final_dir: Path, staged_counts: Sequence[Mapping[str, Any]]
                   ) -> dict[str, Any]:
    """Per source and task: read / written / quarantined / dropped (per reason), tokens, audio hours.

    Read, quarantined and dropped come from the staged rows (one per record read); written from the
    shards themselves; duplicate record ids dropped while writing from the shards' metadata. The job
    fails if read != written records + quarantined + dropped for any source."""
    sources = {s.source_name: _zero_counts() for s in settings.sources}
    reasons: dict[str, int] = {}
    for row in staged_counts:
        c = sources.setdefault(row["source"], _zero_counts())
        c["read"] += row["n"]
        if row["status"] == q.QUARANTINE:
            c["quarantined"] += row["n"]
            key = f"{row['stage']}/{row['error']}"
            reasons[key] = reasons.get(key, 0) + row["n"]
        elif row["status"] == q.DROP:
            c["dropped"][row["drop_reason"]] = c["dropped"].get(row["drop_reason"], 0) + row["n"]
    shard_files = sorted((final_dir / PARQUET_DIR).glob("*.parquet"))
    for path in shard_files:
        stats = json.loads((pq.read_schema(path).metadata or {}).get(SHARD_STATS_KEY, b"{}"))
        for source, n in stats.get("duplicates", {}).items():
            dropped = sources.setdefault(source, _zero_counts())["dropped"]
            dropped["duplicate_id"] = dropped.get("duplicate_id", 0) + n
    with duckdb.connect() as con:
        con.execute("SET threads = 1")  # one thread: float sums in a fixed order, so manifests are identical
        written = con.sql(
            "SELECT source, task, count(*) AS samples, count(*) FILTER (WHERE copy = 0) AS records, "
            "sum(n_tokens) AS tokens, sum(n_text_tokens) AS text_tokens, sum(n_audio_tokens) AS audio_tokens, "
            f"sum(audio_seconds) AS seconds FROM read_parquet({sql_literal(final_dir / PARQUET_DIR / '*.parquet')}) "
            "GROUP BY ALL ORDER BY ALL").to_arrow_table().to_pylist()
    tasks: dict[str, dict[str, Any]] = {}
    for row in written:
        c = sources.setdefault(row["source"], _zero_counts())
        hours = round(float(row["seconds"] or 0.0) / 3600.0, 6)
        c["written_records"] += row["records"]
        c["written_samples"] += row["samples"]
        for key in ("tokens", "text_tokens", "audio_tokens"):
            c[key] += int(row[key] or 0)
        c["audio_hours"] = round(c["audio_hours"] + hours, 6)
        c["tasks"][row["task"]] = {"samples": row["samples"], "tokens": int(row["tokens"] or 0), "audio_hours": hours}
        t = tasks.setdefault(row["task"], {"samples": 0, "tokens": 0, "audio_hours": 0.0})
        t["samples"] += row["samples"]
        t["tokens"] += int(row["tokens"] or 0)
        t["audio_hours"] = round(t["audio_hours"] + hours, 6)
    broken = {name: c for name, c in sources.items()
              if c["read"] != c["written_records"] + c["quarantined"] + sum(c["dropped"].values())}
    if broken:
        raise RuntimeError(f"counts do not reconcile (read != written + quarantined + dropped): {broken}")
    total = _zero_counts()
    del total["tasks"]
    for c in sources.values():
        for key in ("read", "written_records", "written_samples", "quarantined", "tokens", "text_tokens",
                    "audio_tokens"):
            total[key] += c[key]
        total["audio_hours"] = round(total["audio_hours"] + c["audio_hours"], 6)
        for reason, n in c["dropped"].items():
            total["dropped"][reason] = total["dropped"].get(reason, 0) + n
    limits = {reason: limit for reason, limit in drop_limits(settings).items() if reason in total["dropped"]}
    return {"sources": sources, "tasks": tasks, "total": total, "quarantine_reasons": reasons, "drop_limits": limits}


def format_summary(counts: Mapping[str, Any]) -> str:
    """The per-source table printed at the end of a run (the same numbers are in manifest.json)."""
    header = ("source", "read", "records", "samples", "quarantined", "dropped", "audio_h", "tokens")
    rows = [header]
    for name, c in [*sorted(counts["sources"].items()), ("TOTAL", counts["total"])]:
        dropped = sum(c["dropped"].values())
        rows.append((name, str(c["read"]), str(c["written_records"]), str(c["written_samples"]),
                     str(c["quarantined"]), str(dropped), f"{c['audio_hours']:.3f}", str(c["tokens"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths,
                                                                                                      strict=True)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    for reason, n in sorted(counts["quarantine_reasons"].items()):
        lines.append(f"quarantined {reason}: {n}")
    limits = counts.get("drop_limits", {})  # absent from manifests of job format 1
    for reason, n in sorted(counts["total"]["dropped"].items()):
        lines.append(f"dropped {reason}: {n}" + (f" ({limits[reason]})" if reason in limits else ""))
    return "\n".join(lines)


# ---- commit and entry point ----------------------------------------------------------------------------

def commit(layout: RunLayout, manifest: Mapping[str, Any]) -> None:
    """Move the finished outputs into `paths.shards` (idempotent: a rerun after a crash here resumes the
    moves; manifest.json goes last, so its presence with this fingerprint means the run is complete)."""
    produced = {PARQUET_DIR, QUARANTINE_DIR} | ({WDS_DIR} if manifest["shards"]["webdataset"] else set())
    for name in (PARQUET_DIR, WDS_DIR, QUARANTINE_DIR):
        src, dst = layout.final / name, layout.shards_dir / name
        if src.exists():
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(src, dst)
        elif name not in produced and dst.exists():
            shutil.rmtree(dst)
    os.replace(layout.final / MANIFEST_FILE, layout.shards_dir / MANIFEST_FILE)
    shutil.rmtree(layout.staging)
    if not any((layout.shards_dir / STAGING_DIR).iterdir()):
        (layout.shards_dir / STAGING_DIR).rmdir()


def _finished(layout: RunLayout) -> bool:
    """Shards of this configuration are in place; a crash after the last move only left staging behind."""
    manifest = layout.shards_dir / MANIFEST_FILE
    if (layout.final / MANIFEST_FILE).exists() or not manifest.is_file():
        return False
    if json.loads(manifest.read_text()).get("fingerprint") != layout.fingerprint:
        return False
    if layout.staging.exists():
        shutil.rmtree(layout.staging)
    return True


@dataclass(frozen=True)
class JobReport:
    """What a run did: the shards' manifest (counts included), wall times per phase, and how much of
    the work an interrupted earlier run had already done."""

    manifest: dict[str, Any]
    timings: dict[str, float]
    up_to_date: bool = False  # nothing to do: the shards of this configuration were already in place
    resumed_records: int = 0  # records staged by an earlier, interrupted run and not redone


def run_tokenize_job(cfg: Mapping[str, Any]) -> JobReport:
    """Run (or resume, or recognise as done) the tokenize job for a full config."""
    from tokenization.codecs import build_codec
    from tokenization.text import load_text_tokenizer
    from tokenization.vocab_factory import make_vocab

    settings = settings_from_config(cfg)
    units = plan_sources(settings.sources)
    try:
        identity = build_codec(settings.codec).identity
        if settings.text_vocab == "corpus":
            text = corpus_text_tokenizer(load_text_tokenizer(settings.text_tokenizer), settings.sources)
            settings = replace(settings, text_subset=text.base_ids)
            log.info("text vocabulary sized to the corpus: %d of %d text ids", text.vocab_size,
                     load_text_tokenizer(settings.text_tokenizer).vocab_size)
        vocab = make_vocab(settings.text_tokenizer, identity, settings.layout, settings.text_subset)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise JobConfigError(f"cannot build the vocabulary (codec {settings.codec.get('kind')!r}, text tokenizer "
                             f"{settings.text_tokenizer!r}): {e}") from e
    layout = RunLayout(settings.shards_dir, fingerprint(settings, vocab.manifest()))
    t0 = time.perf_counter()
    if not settings.force and _finished(layout):
        manifest = read_manifest(settings.shards_dir / MANIFEST_FILE)
        print(f"shards in {settings.shards_dir} are up to date (fingerprint {layout.fingerprint[:16]}); "
              "force=true rebuilds them")
        print(format_summary(manifest["counts"]))
        return JobReport(manifest, {"total_s": round(time.perf_counter() - t0, 3)}, up_to_date=True)
    layout.prepare(settings.force)
    timings: dict[str, float] = {}
    resumed = 0
    if not (layout.final / MANIFEST_FILE).is_file():
        owns_ray = ensure_ray(settings.address, settings.num_cpus, settings.object_store_gb)
        try:
            if not layout.rows_done.is_file():
                import ray

                settings = size_pools(settings, float(ray.cluster_resources().get("CPU", 0.0)))
                t1 = time.perf_counter()
                resumed = stage_records(settings, units, identity, layout)
                timings["stage_s"] = round(time.perf_counter() - t1, 3)
            t2 = time.perf_counter()
            finalize(settings, vocab, layout)
            timings["finalize_s"] = round(time.perf_counter() - t2, 3)
        finally:
            if owns_ray:
                import ray

                ray.shutdown()
    manifest = read_manifest(layout.final / MANIFEST_FILE)
    commit(layout, manifest)
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    print(format_summary(manifest["counts"]), file=sys.stdout)
    return JobReport(manifest, timings, resumed_records=resumed)


__all__ = [
    "JOB_FORMAT", "TASK_CPUS", "JobConfigError", "JobReport", "JobSettings", "JobStalledError", "RunLayout",
    "StallWatchdog", "actor_pools", "assign_parts", "can_encode", "collect_counts", "commit", "drop_limits",
    "finalize", "fingerprint", "format_summary", "load_sources", "needs_speech", "partition_group", "plan_sources",
    "run_tokenize_job", "settings_from_config", "size_pools", "stage_records", "watch_phase", "watching",
    "write_part_rows", "write_parts",
]
