"""The paper's Table 1 as one command: train every objective variant, then evaluate them all into one table.

    python workflows/sweep.py                                          # sweep=embedded: the six variants on CPU
    python workflows/sweep.py 'sweep.variants=[ar_baseline,ttt]' sweep.train.max_steps=10
    ray job submit --working-dir . -- python workflows/sweep.py sweep=production train=a100x32 eval=production \
        paths.root=/nfs/ttt/run1 data.sources_file=/nfs/ttt/sources.yaml codec=glm4voice \
        codec.tokenizer_path=/models/glm-4-voice-tokenizer codec.decoder_path=/models/glm-4-voice-decoder \
        model=qwen2.5-3b model.init=pretrained model.path=/models/Qwen2.5-3B

At paper scale name your corpora (`data.sources_file`, a YAML list of sources; the data group's default is the
embedded synthetic corpora) and the codec, and put `paths.root` on storage every node reads (NFS, a PVC) as an
absolute path: under `ray job submit` a relative one would land in the job's temporary copy of the working dir,
so a sweep that joins a cluster (ray_address / RAY_ADDRESS) refuses a relative `sweep.root`.

Variants are options of the `objective` config group (AR baseline, NAR baseline, TtT, TtT without BANOM / PPM /
SST). Each is its own training run: the root config composed again with this run's overrides plus
`objective=<variant>` (the ablation files extend `ttt` through their defaults list, so only Hydra can build them),
`sweep.train` merged over `train`, run name `sweep-<variant>`, checkpoints under `<sweep.root>/checkpoints` and
logs under `<sweep.root>/train/sweep-<variant>`, all apart from the main run's. Rerunning resumes: an unfinished
variant continues from its latest checkpoint (workflows/train.py), a finished one is not started again. Then one
evaluation (pipelines/eval/jobs.py) runs every variant's final checkpoint under every `sweep.samplers` setting,
with `sweep.eval` merged over `eval`, into `<sweep.root>/eval/table.json` and `table.md` (runs evaluated before
with the same checkpoint and settings are reused); the run report shows that table as "Sweep (Table 1)". The
table holds the variants of this call only: `sweep.variants=[ttt]` rewrites it with the TtT rows alone (the other
variants' checkpoints and evaluated runs stay, so listing all of them again rebuilds the full table at once).

Configuration mistakes are reported before anything trains (exit status 2): in any variant's config; a
command-line `train.*` / `eval.*` / `sampler.*` override that `sweep.train` / `sweep.eval` / `sweep.samplers`
would silently replace; sampler settings; a variant whose existing checkpoint was trained with another objective
than the one composed now; and evaluation sources that are missing or malformed (checked after the data stages
when `prepare` is one of them, since it writes the embedded evaluation sets).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ttt_common.config_tools import reject_unknown_keys

CONF_DIR = Path(__file__).resolve().parent / "conf"
OBJECTIVE_GROUP = "objective"
DATA_STAGES = ("prepare", "tokenize")
RUN_PREFIX = "sweep-"
SWEEP_TRAIN_KEYS = ("name", "checkpoint.storage_path", "logging.dir")  # set per variant by variant_train


class SweepConfigError(ValueError):
    """A mistake in the `sweep` config group; the message says what to fix."""


@dataclass(frozen=True)
class SweepSettings:
    """The validated `sweep` group (workflows/conf/sweep/embedded.yaml documents every key)."""

    root: Path
    variants: tuple[str, ...]
    data_stages: tuple[str, ...]
    train: dict[str, Any]
    eval: dict[str, Any]
    samplers: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Variant:
    """One training run of the sweep: its objective option and its full resolved config (plain dicts)."""

    name: str
    config: dict[str, Any]

    @property
    def run_name(self) -> str:
        return self.config["train"]["name"]


# ------------------------------------------------------------------------------------------------ config

def _unknown_keys(over: Mapping[str, Any], base: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of `over` that `base` does not have (nested mappings compared key by key)."""
    out = []
    for key, value in over.items():
        if key not in base:
            out.append(f"{prefix}{key}")
        elif isinstance(value, Mapping) and isinstance(base[key], Mapping):
            out.extend(_unknown_keys(value, base[key], f"{prefix}{key}."))
    return out


def _leaves(m: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the values of `m` that are not mappings (what merging `m` over a config replaces)."""
    out = []
    for key, value in m.items():
        out.extend(_leaves(value, f"{prefix}{key}.") if isinstance(value, Mapping) else [f"{prefix}{key}"])
    return out


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` merged into `base` (nested mappings key by key, anything else replaced), as plain dicts."""
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(dict(base)), OmegaConf.create(dict(over))))


def _check_samplers(samplers: Sequence[Mapping[str, Any]], base: Mapping[str, Any]) -> None:
    """Each sampler setting merged over the sampler group must be a valid SamplerConfig (decode mode, schedule,
    threshold, ...), and no two may share a run id, which the evaluation would refuse after all variants trained."""
    from pipelines.eval.jobs import sampler_slug
    from ttt_model.decoding.sampler_config import SamplerConfig

    for i, s in enumerate(samplers):
        try:
            SamplerConfig.from_mapping(merged(base, s))
        except (ValueError, TypeError) as e:
            raise SweepConfigError(f"sweep.samplers[{i}]: {e}") from e
    slugs = [sampler_slug(s) for s in samplers]
    twice = sorted({slug for slug in slugs if slugs.count(slug) > 1})
    if twice:
        raise SweepConfigError(f"sweep.samplers: settings {twice} are listed more than once (each setting is one "
                               "evaluated run per variant)")


def parse_sweep(cfg: Mapping[str, Any], known_variants: Sequence[str], joins_cluster: bool = False) -> SweepSettings:
    """Check the `sweep` group of a resolved root config against the other groups; raises SweepConfigError.
    `joins_cluster`: the sweep runs on a Ray cluster (ray_address or RAY_ADDRESS set), where `sweep.root` must be
    absolute."""
    sweep = cfg.get("sweep")
    if not isinstance(sweep, Mapping):
        raise SweepConfigError("no sweep config: compose a sweep group (sweep=embedded or sweep=production)")
    allowed = {f.name for f in fields(SweepSettings)}
    reject_unknown_keys(sweep, allowed, "sweep", SweepConfigError)
    if not sweep.get("root"):
        raise SweepConfigError("sweep.root is not set: the directory for the sweep's checkpoints, logs and table")
    root = str(sweep["root"])
    if "://" in root:
        raise SweepConfigError(f"sweep.root {root}: a URI is not supported; checkpoints must be on a filesystem "
                               "every node and the evaluation can read (NFS, a PVC mounted at the same path)")
    if joins_cluster and not Path(root).expanduser().is_absolute():
        raise SweepConfigError(f"sweep.root {root} is relative but the sweep joins a Ray cluster (ray_address / "
                               "RAY_ADDRESS): under `ray job submit` it would land in the job's temporary copy of "
                               "the working dir; set an absolute paths.root (or sweep.root) on shared storage")
    variants = list(sweep.get("variants") or [])
    if not variants:
        raise SweepConfigError("sweep.variants is empty: list objective options, e.g. [ar_baseline, ttt]")
    unknown = [v for v in variants if v not in known_variants]
    if unknown:
        raise SweepConfigError(f"sweep.variants: unknown variants {unknown} (the objective config group has "
                               f"{', '.join(sorted(known_variants))})")
    if len(set(variants)) != len(variants):
        raise SweepConfigError(f"sweep.variants lists a variant twice: {variants}")
    stages = list(sweep.get("data_stages") or [])
    if set(stages) - set(DATA_STAGES):
        raise SweepConfigError(f"sweep.data_stages: unknown stages {sorted(set(stages) - set(DATA_STAGES))} "
                               f"(allowed: {', '.join(DATA_STAGES)})")
    train, ev = sweep.get("train") or {}, sweep.get("eval") or {}
    if not isinstance(train, Mapping) or not isinstance(ev, Mapping):
        raise SweepConfigError("sweep.train and sweep.eval must be mappings (merged over `train` and `eval`)")
    if "grid" in ev:
        raise SweepConfigError("sweep.eval.grid: the sweep builds the grid itself (one checkpoint per variant); "
                               "set sampler settings in sweep.samplers")
    # Top-level keys only: a different judge or ASR model may legitimately bring keys the eval group lacks.
    typos = [k for k in ev if k not in (cfg.get("eval") or {})]
    if typos:
        raise SweepConfigError(f"sweep.eval: keys {typos} are not in the eval group")
    samplers = list(sweep.get("samplers") or [{}])
    for i, s in enumerate(samplers):
        if not isinstance(s, Mapping):
            raise SweepConfigError(f"sweep.samplers[{i}] must be a mapping of sampler overrides, got {s!r}")
        bad = _unknown_keys(s, cfg.get("sampler") or {})  # the sampler group is a fixed schema: check it all
        if bad:
            raise SweepConfigError(f"sweep.samplers[{i}]: unknown sampler keys {bad}")
    _check_samplers(samplers, cfg.get("sampler") or {})
    stages_in_order = tuple(s for s in DATA_STAGES if s in stages)
    return SweepSettings(Path(root).expanduser().absolute(), tuple(variants), stages_in_order,
                         dict(train), dict(ev), tuple(dict(s) for s in samplers))


def _overlap(a: str, b: str) -> bool:
    """Whether dotted paths `a` and `b` name the same value or one lies inside the other."""
    return a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


def check_overrides(overrides: Sequence[str], settings: SweepSettings) -> None:
    """Refuse a command-line key override of `train`, `eval` or `sampler` that the sweep replaces: the values of
    `sweep.train`, `sweep.eval` and `sweep.samplers` are merged over the groups after Hydra applied the command
    line (so `train.max_steps=10` under sweep.train.max_steps=30 would silently train 30 steps), and every
    variant's train.name, checkpoint and log locations are the sweep's own."""
    swept = {"train": [("sweep.train", _leaves(settings.train))], "eval": [("sweep.eval", _leaves(settings.eval))],
             "sampler": [(f"sweep.samplers[{i}]", _leaves(s)) for i, s in enumerate(settings.samplers)]}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        group, _, rest = override.key_or_group.partition(".")
        if not rest or group not in swept:  # a group selection (train=a100x32) or another group's key
            continue
        value = override.value()  # a mapping value sets its leaves only: Hydra merges it into the group
        paths = _leaves(value, f"{rest}.") if isinstance(value, Mapping) and value else [rest]
        if group == "train" and any(_overlap(p, own) for p in paths for own in SWEEP_TRAIN_KEYS):
            raise SweepConfigError(f"{override.key_or_group}: the sweep sets train.{', train.'.join(SWEEP_TRAIN_KEYS)} "
                                   "for every variant (sweep-<variant> under sweep.root): set sweep.root instead")
        for where, leaves in swept[group]:
            for leaf in leaves:
                if any(_overlap(p, leaf) for p in paths):
                    raise SweepConfigError(f"{override.key_or_group} is overridden by {where}.{leaf}: "
                                           f"set {where}.{leaf} instead")


def check_eval_sources(eval_cfg: Mapping[str, Any]) -> None:
    """Every configured evaluation source passes its reader's layout check, and there is at least one, so a wrong
    path stops the sweep before training instead of after it. Hand-written next to pipelines/eval/jobs.py's
    load_eval_items because that one reads every item (audio included; tens of thousands of utterances at paper
    scale) and the evaluation reads them again anyway: the readers' `validate` only looks at the layout."""
    from pipelines.eval.items import TASKS
    from pipelines.readers import get_reader
    from pipelines.records import SourceConfig

    count = 0
    for task, task_cfg in (eval_cfg.get("tasks") or {}).items():
        if task not in TASKS:
            raise SweepConfigError(f"eval.tasks.{task}: unknown task (known: {', '.join(TASKS)})")
        for i, mapping in enumerate((task_cfg or {}).get("sources") or []):
            try:
                source = SourceConfig.from_mapping(mapping)
                get_reader(source.kind).validate(source)
            except (ValueError, OSError) as e:
                raise SweepConfigError(f"eval.tasks.{task}.sources[{i}]: {e}") from e
            count += 1
    if not count:
        raise SweepConfigError("no evaluation sources: configure eval.tasks.{audio_qa,asr,tts}.sources")


def check_recorded_objective(variant: Variant) -> None:
    """Refuse a variant whose latest checkpoint records another objective than the one composed now (e.g.
    `objective.p_mix=0.5` added after the sweep trained): it would be resumed from, or reused as finished, and
    evaluated under a config it was not trained with. (Objective changes only: the other settings of a finished
    run are not recorded with it; a digest of the whole config in train.py's final.json would cover them.)"""
    from ttt_model.core.checkpoint_layout import load_objective
    from ttt_model.core.objective import ObjectiveConfig
    from ttt_model.training.resume_checkpoint import MODEL_DIR

    run_dir = Path(variant.config["train"]["checkpoint"]["storage_path"]) / variant.run_name
    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    recorded = load_objective(checkpoints[-1] / MODEL_DIR) if checkpoints else None
    if recorded is not None:  # a key added to the objective since the record was written held its default value
        recorded = {**json.loads(json.dumps(asdict(ObjectiveConfig()))), **recorded}
    wanted = json.loads(json.dumps(variant.config[OBJECTIVE_GROUP]))  # as the record holds it (lists, not tuples)
    if recorded is not None and recorded != wanted:
        changed = sorted(k for k in recorded.keys() | wanted.keys() if recorded.get(k) != wanted.get(k))
        raise SweepConfigError(f"{variant.name}: {checkpoints[-1]} was trained with another objective (differs in "
                               f"{changed}): delete {run_dir} to train it again, or set another sweep.root")


@contextmanager
def _naming(variant: str) -> Iterator[None]:
    """Prefix a TrainConfigError with the variant it is about: six runs share one config and one error stream."""
    from ttt_model.training.settings import TrainConfigError

    try:
        yield
    except TrainConfigError as e:
        raise TrainConfigError(f"{variant}: {e}") from e


def without_objective(overrides: Sequence[str]) -> list[str]:
    """The overrides minus any selection of the objective group (`objective=x`, `+objective=x`, `~objective`);
    key overrides such as `objective.p_mix=0.5` stay and apply to every variant."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.input_line for o in parsed if o.key_or_group != OBJECTIVE_GROUP]


def current_overrides() -> tuple[str, list[str]]:
    """(config name, command-line overrides) of the running Hydra app; ("config", []) outside one."""
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        return str(hc.job.config_name or "config"), list(hc.overrides.task)
    return "config", []


def _with_hydra(fn: Callable[[], Any]) -> Any:
    """Run a compose-API call inside the running app's Hydra, or in one over workflows/conf (tests, scripts)."""
    if GlobalHydra.instance().is_initialized():
        return fn()
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return fn()


def known_variants() -> list[str]:
    """Every option of the objective config group, from Hydra's config search path."""
    return _with_hydra(lambda: GlobalHydra.instance().config_loader().get_group_options(OBJECTIVE_GROUP))


def compose_variant(config_name: str, overrides: Sequence[str], variant: str) -> dict[str, Any]:
    """The root config as this run composed it, but with `objective=<variant>`; resolved plain dicts."""
    extra = [*without_objective(overrides), f"{OBJECTIVE_GROUP}={variant}"]
    cfg = _with_hydra(lambda: hydra.compose(config_name=config_name, overrides=extra))
    return OmegaConf.to_container(cfg, resolve=True)


def variant_train(cfg: Mapping[str, Any], settings: SweepSettings, variant: str) -> dict[str, Any]:
    """`sweep.train` over the variant's `train`, with the sweep's run name, checkpoint and log locations."""
    name = f"{RUN_PREFIX}{variant}"
    train = merged(cfg["train"], settings.train)
    train["name"] = name
    train.setdefault("checkpoint", {})["storage_path"] = str(settings.root / "checkpoints")
    train.setdefault("logging", {})["dir"] = str(settings.root / "train" / name)
    return train


def plan_variants(cfg: DictConfig | Mapping[str, Any], overrides: Sequence[str] | None = None,
                  config_name: str | None = None) -> tuple[SweepSettings, list[Variant]]:
    """Validate the sweep and compose every variant's config; nothing runs. `overrides` default to the running
    Hydra app's (pass the same overrides `cfg` was composed with when calling this outside an app). The
    evaluation sources are checked here unless the `prepare` data stage, which writes them, is still to run."""
    from ttt_model.core.objective import ObjectiveConfig
    from ttt_model.training.settings import parse_settings

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    app_name, app_overrides = current_overrides()
    config_name = config_name or app_name
    overrides = app_overrides if overrides is None else list(overrides)
    joins_cluster = bool(plain.get("ray_address") or os.environ.get("RAY_ADDRESS"))
    settings = parse_sweep(plain, known_variants(), joins_cluster)
    check_overrides(overrides, settings)
    if "prepare" not in settings.data_stages:
        check_eval_sources(merged(plain.get("eval") or {}, settings.eval))
    variants = []
    for variant in settings.variants:
        composed = compose_variant(config_name, overrides, variant)
        composed["train"] = variant_train(composed, settings, variant)
        with _naming(variant):
            parse_settings(composed["train"])  # TrainConfigError: e.g. a typo in sweep.train
        try:
            ObjectiveConfig.from_mapping(composed[OBJECTIVE_GROUP])
        except ValueError as e:
            raise SweepConfigError(f"objective {variant}: {e}") from e
        planned = Variant(variant, composed)
        check_recorded_objective(planned)
        variants.append(planned)
    return settings, variants


def eval_config(cfg: Mapping[str, Any], settings: SweepSettings, checkpoints: Mapping[str, str]) -> dict[str, Any]:
    """The evaluation of the sweep: `sweep.eval` over `eval`, one grid entry per variant (its final checkpoint,
    `system` = the objective name, so the table names the row), the sampler grid, and the sweep's own eval dir."""
    out = dict(cfg)
    ev = merged(cfg["eval"], settings.eval)
    ev["grid"] = {"checkpoints": [{"path": path, "system": variant} for variant, path in checkpoints.items()],
                  "samplers": [dict(s) for s in settings.samplers]}
    out["eval"] = ev
    out["paths"] = {**cfg["paths"], "eval": str(settings.root / "eval")}
    return out


# ------------------------------------------------------------------------------------------------- run

def _data_stage(stage: str, cfg: DictConfig) -> None:
    if stage == "prepare":
        from workflows.prepare_data import run as prepare

        prepare(cfg)
    else:
        from workflows.tokenize_data import run as tokenize

        tokenize(cfg)


def run(cfg: DictConfig | Mapping[str, Any], overrides: Sequence[str] | None = None,
        codec_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    """The whole sweep: check every variant, data stages, train each variant, evaluate all of them.

    `overrides`: those `cfg` was composed with (default: the running Hydra app's); every variant is composed
    with them. `codec_factory`: the codec the evaluation's generate actors use (default: `build_codec(cfg.codec)`).
    Returns {root, variants: {variant: final.json content}, table, table_json, table_md, seconds}."""
    from pipelines.eval.jobs import TABLE_JSON, TABLE_MD, run_evaluation
    from pipelines.ray_runtime import ensure_ray
    from ttt_model.training.plan import plan_run
    from workflows.train import finished_run
    from workflows.train import run as train

    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))  # the data stages read attributes
    plain = OmegaConf.to_container(cfg, resolve=True)
    settings, variants = plan_variants(cfg, overrides)
    seconds: dict[str, float] = {}
    started = ensure_ray(address=cfg.get("ray_address"))
    try:
        for stage in settings.data_stages:
            t0 = time.perf_counter()
            _data_stage(stage, cfg)
            seconds[stage] = round(time.perf_counter() - t0, 1)
        if "prepare" in settings.data_stages:  # plan_variants checked them when no stage writes them
            check_eval_sources(merged(plain.get("eval") or {}, settings.eval))
        # every variant's full training check (shards, vocabulary, model) before any of them trains
        plans = {}
        for v in variants:
            with _naming(v.name):
                plans[v.name] = plan_run(v.config)
        finals = {}
        for v in variants:
            done = finished_run(plans[v.name])
            if done is not None:
                print(f"sweep: {v.name} is finished ({done['model']})", flush=True)
                finals[v.name] = done
                continue
            t0 = time.perf_counter()
            print(f"sweep: training {v.name} as {v.run_name}", flush=True)
            with _naming(v.name):
                finals[v.name] = train(v.config)
            seconds[f"train/{v.name}"] = round(time.perf_counter() - t0, 1)
        missing = [name for name, final in finals.items() if not final.get("model")]
        if missing:
            raise RuntimeError(f"sweep: training left no checkpoint for {missing}")
        t0 = time.perf_counter()
        table = run_evaluation(eval_config(plain, settings, {n: f["model"] for n, f in finals.items()}),
                               codec_factory=codec_factory)
        seconds["evaluate"] = round(time.perf_counter() - t0, 1)
    finally:
        if started:
            import ray

            ray.shutdown()
    eval_dir = settings.root / "eval"
    return {"root": str(settings.root), "variants": finals, "table": table, "table_json": str(eval_dir / TABLE_JSON),
            "table_md": str(eval_dir / TABLE_MD), "seconds": seconds}


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from pipelines.console import setup_console
    from pipelines.eval.jobs import EvalConfigError
    from pipelines.tokenize_job import JobConfigError
    from ttt_model.training.settings import TrainConfigError

    setup_console(cfg, "sweep")
    try:
        out = run(cfg)
    except (SweepConfigError, TrainConfigError, EvalConfigError, JobConfigError) as e:
        print(f"sweep: {e}", file=sys.stderr)  # a config mistake: the message says what to fix, no traceback
        sys.exit(2)
    print("sweep timings (s): " + ", ".join(f"{k} {v}" for k, v in out["seconds"].items()))
    print(f"sweep table: {out['table_md']} ({out['table_json']})")


if __name__ == "__main__":
    main()
