"""Reads CosyVoice's HyperPyYAML `config.yaml` and builds our flow and HiFT modules from it.

Upstream instantiates classes named in the YAML (`!new:cosyvoice.flow.flow.MaskedDiffWithXvec`, `!ref
<spk_embed_dim>`, `!new:omegaconf.DictConfig`, `!apply:torch.manual_seed [1986]`, ...). We parse every
tag lazily with a plain PyYAML loader and then build only the `flow` and `hift` sections, mapping the
known class paths to our own classes. Everything else in the file (LLM, data pipeline, optimiser,
seeding) is never evaluated, so no foreign code runs and no cosyvoice/hyperpyyaml install is needed.
A tag or class path we do not know inside the decoder sections raises `ConfigError` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tokenization.codecs.cosyvoice.conformer import BlockConformerEncoder, ConformerEncoder
from tokenization.codecs.cosyvoice.estimator import ConditionalDecoder
from tokenization.codecs.cosyvoice.flow import ConditionalCFM, InterpolateRegulator, MaskedDiffWithXvec
from tokenization.codecs.cosyvoice.hift import ConvRNNF0Predictor, HiFTGenerator

DECODER_SECTIONS = ("flow", "hift")


class ConfigError(ValueError):
    """The config cannot be turned into a decoder (missing section, unknown tag or class)."""


def _dict_config(content: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`omegaconf.DictConfig(content=...)` as a plain dict (our modules only read keys)."""
    return dict(content or {})


CLASS_REGISTRY: dict[str, Callable[..., Any]] = {
    "cosyvoice.flow.flow.MaskedDiffWithXvec": MaskedDiffWithXvec,
    "cosyvoice.transformer.encoder.ConformerEncoder": ConformerEncoder,
    "cosyvoice.transformer.encoder.BlockConformerEncoder": BlockConformerEncoder,
    "cosyvoice.flow.length_regulator.InterpolateRegulator": InterpolateRegulator,
    "cosyvoice.flow.flow_matching.ConditionalCFM": ConditionalCFM,
    "cosyvoice.flow.decoder.ConditionalDecoder": ConditionalDecoder,
    "cosyvoice.hifigan.generator.HiFTGenerator": HiFTGenerator,
    "cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor": ConvRNNF0Predictor,
    "omegaconf.DictConfig": _dict_config,
}


@dataclass(frozen=True)
class Tagged:
    """A YAML node with a HyperPyYAML tag, kept unevaluated: `!kind:target value` (target may be '')."""

    kind: str
    target: str
    value: Any


class _LazyLoader(yaml.SafeLoader):
    """SafeLoader that keeps `!...` tags as `Tagged` nodes and reads YAML 1.2 floats such as `1e-06`."""


_LazyLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_LazyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    kind, _, target = suffix.partition(":")
    value: Any
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged(kind, target, value)


_LazyLoader.add_multi_constructor("!", _construct_tagged)


def parse_config(text: str) -> dict[str, Any]:
    """Parse a HyperPyYAML document without evaluating any tag."""
    try:
        data = yaml.load(text, Loader=_LazyLoader)  # _LazyLoader is a SafeLoader: no arbitrary objects
    except yaml.YAMLError as err:
        raise ConfigError(f"config.yaml is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError("config.yaml must hold a mapping at the top level")
    return data


_REF = re.compile(r"^<([^<>]+)>$")


class _Builder:
    """Evaluates one section of a parsed config: resolves `!ref`, instantiates registered `!new:`."""

    def __init__(self, root: Mapping[str, Any], section: str) -> None:
        self.root = root
        self.section = section

    def lookup(self, path: str, seen: tuple[str, ...]) -> Any:
        if path in seen:
            raise ConfigError(f"{self.section}: circular !ref <{path}>")
        keys = path.replace("]", "").split("[")
        node: Any = self.root
        for key in keys:
            if not isinstance(node, Mapping) or key not in node:
                raise ConfigError(f"{self.section}: !ref <{path}> points at nothing")
            node = node[key]
        return self.build(node, (*seen, path))

    def build(self, node: Any, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(node, Mapping):
            return {k: self.build(v, seen) for k, v in node.items()}
        if isinstance(node, list):
            return [self.build(v, seen) for v in node]
        if not isinstance(node, Tagged):
            return node
        if node.kind == "ref":
            match = _REF.match(str(node.value).strip())
            if match is None:
                raise ConfigError(f"{self.section}: unsupported !ref expression {node.value!r} (only '<key>')")
            return self.lookup(match.group(1), seen)
        if node.kind == "new":
            factory = CLASS_REGISTRY.get(node.target)
            if factory is None:
                known = ", ".join(sorted(CLASS_REGISTRY))
                raise ConfigError(f"{self.section}: unknown class !new:{node.target} (supported: {known})")
            args = self.build(node.value, seen)
            try:
                if isinstance(args, Mapping):
                    return factory(**args)
                if isinstance(args, list):
                    return factory(*args)
                return factory() if args in (None, "") else factory(args)
            except TypeError as err:
                raise ConfigError(f"{self.section}: bad arguments for {node.target}: {err}") from err
        raise ConfigError(f"{self.section}: unsupported tag !{node.kind}:{node.target} in a decoder section")


@dataclass(frozen=True)
class DecoderModules:
    """The two modules a decoder directory's config describes, with fresh (untrained) weights."""

    flow: MaskedDiffWithXvec
    hift: HiFTGenerator


def build_decoder_modules(config_path: Path) -> DecoderModules:
    """config.yaml -> (flow, hift) modules of our classes, ready for `load_state_dict`."""
    root = parse_config(Path(config_path).read_text(encoding="utf-8"))
    missing = [s for s in DECODER_SECTIONS if s not in root]
    if missing:
        raise ConfigError(f"{config_path}: missing section(s) {missing}")
    flow = _Builder(root, "flow").build(root["flow"])
    hift = _Builder(root, "hift").build(root["hift"])
    if not isinstance(flow, MaskedDiffWithXvec):
        raise ConfigError(f"{config_path}: 'flow' must be !new:cosyvoice.flow.flow.MaskedDiffWithXvec")
    if not isinstance(hift, HiFTGenerator):
        raise ConfigError(f"{config_path}: 'hift' must be !new:cosyvoice.hifigan.generator.HiFTGenerator")
    return DecoderModules(flow=flow, hift=hift)
