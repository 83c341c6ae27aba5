"""The paper's Table 1 as one command: train every objective variant, then evaluate them all into one table.

    python workflows/sweep.py                                          # sweep=embedded: the six variants on CPU
    python workflows/sweep.py 'sweep.variants=[ar_baseline,ttt]' sweep.train.max_steps=10
    ray job submit --working-dir . -- python workflows/sweep.py sweep=production train=a100x32 eval=production \
        model=qwen2.5-3b model.init=pretrained model.path=/models/Qwen2.5-3B paths.root=/nfs/ttt/run1

Variants are options of the `objective` config group (AR baseline, NAR baseline, TtT, TtT without BANOM / PPM /
SST). Each is its own training run: the root config composed again with this run's overrides plus
`objective=<variant>` (the ablation files extend `ttt` through their defaults list, so only Hydra can build them),
`sweep.train` merged over `train`, run name `sweep-<variant>`, checkpoints under `<sweep.root>/checkpoints` and
logs under `<sweep.root>/train/sweep-<variant>`, all apart from the main run's. Rerunning resumes: an unfinished
variant continues from its latest checkpoint (workflows/train.py), a finished one is not started again. Then one
evaluation (pipelines/eval/jobs.py) runs every variant's final checkpoint under every `sweep.samplers` setting,
with `sweep.eval` merged over `eval`, into `<sweep.root>/eval/table.json` and `table.md` (runs evaluated before
with the same checkpoint and settings are reused); the run report shows that table as "Sweep (Table 1)".
Configuration mistakes in any variant are reported before anything trains (exit status 2).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Python puts the script's own directory first on sys.path; it must go, because workflows/tokenize.py there
# would shadow the standard library's `tokenize`. The repository root takes its place.
_ROOT = str(Path(__file__).resolve().parents[1])
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import hydra  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

if TYPE_CHECKING:
    from ttt_model.train_plan import RunPlan

CONF_DIR = Path(__file__).resolve().parent / "conf"
OBJECTIVE_GROUP = "objective"
DATA_STAGES = ("prepare", "tokenize")
RUN_PREFIX = "sweep-"


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


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` merged into `base` (nested mappings key by key, anything else replaced), as plain dicts."""
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(dict(base)), OmegaConf.create(dict(over))))


def parse_sweep(cfg: Mapping[str, Any], known_variants: Sequence[str]) -> SweepSettings:
    """Check the `sweep` group of a resolved root config against the other groups; raises SweepConfigError."""
    sweep = cfg.get("sweep")
    if not isinstance(sweep, Mapping):
        raise SweepConfigError("no sweep config: compose a sweep group (sweep=embedded or sweep=production)")
    allowed = {f.name for f in fields(SweepSettings)}
    if set(sweep) - allowed:
        raise SweepConfigError(f"sweep: unknown keys {sorted(set(sweep) - allowed)} (allowed: {sorted(allowed)})")
    if not sweep.get("root"):
        raise SweepConfigError("sweep.root is not set: the directory for the sweep's checkpoints, logs and table")
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
    stages_in_order = tuple(s for s in DATA_STAGES if s in stages)
    return SweepSettings(Path(str(sweep["root"])).expanduser().absolute(), tuple(variants), stages_in_order,
                         dict(train), dict(ev), tuple(dict(s) for s in samplers))


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
    Hydra app's (pass the same overrides `cfg` was composed with when calling this outside an app)."""
    from ttt_model.objective import ObjectiveConfig
    from ttt_model.train_config import parse_settings

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    app_name, app_overrides = current_overrides()
    config_name = config_name or app_name
    overrides = app_overrides if overrides is None else list(overrides)
    settings = parse_sweep(plain, known_variants())
    variants = []
    for variant in settings.variants:
        composed = compose_variant(config_name, overrides, variant)
        composed["train"] = variant_train(composed, settings, variant)
        parse_settings(composed["train"])  # TrainConfigError: e.g. a typo in sweep.train
        try:
            ObjectiveConfig.from_mapping(composed[OBJECTIVE_GROUP])
        except ValueError as e:
            raise SweepConfigError(f"objective {variant}: {e}") from e
        variants.append(Variant(variant, composed))
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

def finished_run(plan: RunPlan) -> dict[str, Any] | None:
    """The final.json of a run with nothing left to do (it reached the planned steps and names the run's latest
    checkpoint), else None. workflows/train.py would only restore that checkpoint, but doing so starts a Ray Train
    worker group and loads model and optimizer state on every rank (minutes for a 3B model on 32 GPUs), so a
    rerun of the sweep skips such variants. Remote storage (s3://...) is always left to workflows/train.py."""
    from workflows.train import FINAL_FILE

    if "://" in plan.storage_path:
        return None
    try:
        final = json.loads((Path(plan.log_dir) / FINAL_FILE).read_text())
    except (OSError, ValueError):
        return None
    checkpoints = sorted(p for p in (Path(plan.storage_path) / plan.settings.name).glob("checkpoint_*") if p.is_dir())
    done = final.get("total_steps") == plan.total_steps and (final.get("metrics") or {}).get("step") == plan.total_steps
    latest = bool(checkpoints) and str(checkpoints[-1]) == str(final.get("checkpoint"))
    return final if done and latest and Path(str(final.get("model"))).is_dir() else None


def _data_stage(stage: str, cfg: DictConfig | Mapping[str, Any]) -> None:
    if stage == "prepare":
        from workflows.prepare_data import run as prepare

        prepare(cfg)
    else:
        from workflows.tokenize import run as tokenize

        tokenize(cfg)


def run(cfg: DictConfig | Mapping[str, Any], overrides: Sequence[str] | None = None,
        codec_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    """The whole sweep: check every variant, data stages, train each variant, evaluate all of them.

    `overrides`: those `cfg` was composed with (default: the running Hydra app's); every variant is composed
    with them. `codec_factory`: the codec the evaluation's generate actors use (default: `build_codec(cfg.codec)`).
    Returns {root, variants: {variant: final.json content}, table, table_json, table_md, seconds}."""
    from pipelines.eval.jobs import TABLE_JSON, TABLE_MD, run_evaluation
    from pipelines.ray_runtime import ensure_ray
    from ttt_model.train_plan import plan_run
    from workflows.train import run as train

    settings, variants = plan_variants(cfg, overrides)
    seconds: dict[str, float] = {}
    started = ensure_ray(address=cfg.get("ray_address"))
    try:
        for stage in settings.data_stages:
            t0 = time.perf_counter()
            _data_stage(stage, cfg)
            seconds[stage] = round(time.perf_counter() - t0, 1)
        # every variant's full training check (shards, vocabulary, model) before any of them trains
        plans = {v.name: plan_run(v.config) for v in variants}
        finals = {}
        for v in variants:
            done = finished_run(plans[v.name])
            if done is not None:
                print(f"sweep: {v.name} is finished ({done['model']})", flush=True)
                finals[v.name] = done
                continue
            t0 = time.perf_counter()
            print(f"sweep: training {v.name} as {v.run_name}", flush=True)
            finals[v.name] = train(v.config)
            seconds[f"train/{v.name}"] = round(time.perf_counter() - t0, 1)
        missing = [name for name, final in finals.items() if not final.get("model")]
        if missing:
            raise RuntimeError(f"sweep: training left no checkpoint for {missing}")
        t0 = time.perf_counter()
        plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
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
    from pipelines.eval.jobs import EvalConfigError
    from pipelines.tokenize_job import JobConfigError
    from ttt_model.train_config import TrainConfigError

    try:
        out = run(cfg)
    except (SweepConfigError, TrainConfigError, EvalConfigError, JobConfigError) as e:
        print(f"sweep: {e}", file=sys.stderr)  # a config mistake: the message says what to fix, no traceback
        sys.exit(2)
    print("sweep timings (s): " + ", ".join(f"{k} {v}" for k, v in out["seconds"].items()))
    print(f"sweep table: {out['table_md']} ({out['table_json']})")


if __name__ == "__main__":
    main()
