"""`ttt generate`: answer a spoken and/or written question with a TtT checkpoint, or use it as a recogniser
(`--task asr`) or a synthesiser (`--task tts`). Prints the text answer (stdout), writes the speech, reports
timings (stderr): first text token, first audio block, first audio, total, audio tokens/s.

On a finished `make run` (the run under runs/local: its latest checkpoint and its fitted codec are found):

    ttt generate --task asr --audio runs/local/raw/LibriSpeech/test-clean/1/1/1-1-0000.flac
    ttt generate --task tts --text "the small dog sees a red ball" --out-wav speech.wav
    ttt generate --audio runs/local/raw/spoken_qa/eval/eval_datas/llama_questions/audios/llama_questions_00000.wav \
        --out-wav answer.wav

Elsewhere, name the run (`--run DIR`) or the checkpoint and codec themselves:

    ttt generate --checkpoint ckpt/model --codec-config glm4voice_local.yaml --text "What is 3 plus 4?" \
        --out-wav answer.wav --steps 5 --temperature 0.7 --top-p 0.9
    ttt generate --checkpoint ckpt/model --codec-config workflows/conf/codec/glm4voice_declared.yaml \
        --text "What is 3 plus 4?" --out-json answer.json   # no decoder: the text, and the codes in answer.json

`--task asr` and `--task tts` send the instruction the model was trained with (pipelines/tasks.py PROMPTS).
Sampler settings start from workflows/conf/sampler/default.yaml (or --sampler-config) and the flags
override them. The decoder follows the checkpoint's training objective unless --decode names one (ttt: AR text
+ diffusion spans; ar / nar: the Table-1 baselines' decoders). Bad input (missing or unreadable audio, empty or
over-long prompt, a directory that is not a TtT checkpoint, a codec that does not match the checkpoint) ends with
a message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent / "conf"
DEFAULT_SAMPLER = CONF_DIR / "sampler" / "default.yaml"
DEFAULT_RUN = "runs/local"  # paths.root of the embedded default (workflows/conf/paths/local.yaml)
TASKS = ("chat", "asr", "tts")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate", help="speech/text in, text + speech out with a TtT checkpoint",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", metavar="DIR", default=DEFAULT_RUN,
                   help=f"a run's root (paths.root, default {DEFAULT_RUN}): its latest checkpoint and its codec "
                        "are used unless --checkpoint / --codec-* name others")
    p.add_argument("--checkpoint", metavar="DIR", help="TtT checkpoint (safetensors + vocab manifest), or a "
                                                        "directory above checkpoints (the latest one is used)")
    codec = p.add_mutually_exclusive_group()
    codec.add_argument("--codec-path", metavar="DIR", help="a fitted embedded codec directory")
    codec.add_argument("--codec-config", metavar="YAML", help="a codec config group file (kind + its fields)")
    p.add_argument("--task", choices=TASKS, default="chat",
                   help="chat: answer --audio/--text; asr: transcribe --audio; tts: speak --text")
    p.add_argument("--language", default="en", help="language of the asr/tts instruction (en | zh)")
    p.add_argument("--audio", metavar="WAV", help="the spoken question (wav/flac/mp3/ogg)")
    p.add_argument("--text", help="the written question (or text before the audio); with --task tts, the text")
    p.add_argument("--system", help="an optional system message")
    p.add_argument("--out-wav", metavar="PATH", help="where to write the spoken answer")
    p.add_argument("--out-json", metavar="PATH", help="also write text, timings and codes as JSON")
    p.add_argument("--text-tokenizer", default="bundled:qwen", help="tokenizer directory (default: bundled Qwen)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto (as saved) | float32 | bfloat16 | float16")
    p.add_argument("--sampler-config", metavar="YAML", default=str(DEFAULT_SAMPLER))
    p.add_argument("--steps", type=int, help="diffusion steps per block")
    p.add_argument("--block-length", type=int)
    p.add_argument("--max-span", type=int, help="most codes per audio span")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--threshold", type=float, help="commit every position at least this confident")
    p.add_argument("--decode", choices=("auto", "ttt", "ar", "nar"),
                   help="decoder (default auto: the checkpoint's recorded training objective, TtT when none)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="argmax for text and audio")
    mode.add_argument("--temperature", type=float, help="sampling temperature for text and audio")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=run)


def sampler_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler config file with the command-line overrides applied (a plain dict for SamplerConfig)."""
    import yaml

    cfg = yaml.safe_load(Path(args.sampler_config).read_text()) or {}
    flat = {"steps_per_block": args.steps, "block_length": args.block_length, "max_span": args.max_span,
            "max_new_tokens": args.max_new_tokens, "threshold": args.threshold, "seed": args.seed,
            "decode": args.decode}
    cfg.update({k: v for k, v in flat.items() if v is not None})
    sampling = {"temperature": 0.0 if args.greedy else args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    for mode in ("text", "audio"):
        cfg[mode] = {**(cfg.get(mode) or {}), **{k: v for k, v in sampling.items() if v is not None}}
    return cfg


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """--checkpoint (a model directory or one above checkpoints), else the latest checkpoint of --run."""
    from pipelines.eval.jobs import resolve_checkpoint

    if args.checkpoint:
        return resolve_checkpoint(args.checkpoint)
    run = Path(args.run).expanduser()
    if not (run / "checkpoints").is_dir():
        raise FileNotFoundError(f"no checkpoints under {run} (finish `make run` first, or pass --run DIR / "
                                "--checkpoint DIR)")
    return resolve_checkpoint(run / "checkpoints")


def user_message(args: argparse.Namespace, audio: Any) -> tuple[str | None, Any]:
    """(text, audio) of the user turn: as given for chat, or the trained instruction for asr/tts."""
    from pipelines.tasks import PROMPTS

    if args.task == "asr":
        if audio is None:
            raise ValueError("--task asr needs --audio")
        return PROMPTS["asr"].get(args.language, PROMPTS["asr"]["en"])[0], audio
    if args.task == "tts":
        if not (args.text and args.text.strip()) or audio is not None:
            raise ValueError("--task tts needs --text and no --audio")
        return PROMPTS["tts"].get(args.language, PROMPTS["tts"]["en"])[0].format(text=args.text.strip()), None
    return args.text, audio


def load_codec(args: argparse.Namespace) -> Any:
    """The codec named on the command line (an embedded codec directory, or a codec config file), else the
    embedded codec the run fitted (<run>/codec/embedded)."""
    if not (args.codec_path or args.codec_config):
        fitted = Path(args.run).expanduser() / "codec" / "embedded"
        if not fitted.exists():
            raise FileNotFoundError(f"no fitted codec at {fitted}: pass --codec-path DIR or --codec-config YAML")
        args.codec_path = str(fitted)
    if args.codec_path:
        path = Path(args.codec_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"codec not found: {path}")
        from tokenization.codecs.embedded import EmbeddedCodec

        return EmbeddedCodec.load(path)
    import yaml

    from tokenization.codecs import build_codec

    path = Path(args.codec_config).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"codec config not found: {path}")
    return build_codec(yaml.safe_load(path.read_text()) or {})


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from tokenization.audio import write_audio
    from ttt_model.decoding.sampler_config import SamplerConfig
    from ttt_model.decoding.speech_lm import Message, SpeechLM, answer, read_audio

    if not args.audio and not (args.text and args.text.strip()):
        return _fail("empty prompt: give --audio and/or --text")
    hf_logging.disable_progress_bar()  # the weight-loading bar would mix with the answer and the timings
    try:
        cfg = SamplerConfig.from_mapping(sampler_settings(args))
        audio = read_audio(args.audio) if args.audio else None  # bad audio fails before the model loads
        text, audio = user_message(args, audio)
        lm = SpeechLM.load(checkpoint_dir(args), load_codec(args), text_tokenizer=args.text_tokenizer,
                           device=args.device, dtype=args.dtype)
        messages = [Message("system", text=args.system)] if args.system else []
        messages.append(Message("user", text=text, audio=audio))
        result = answer(lm, messages, cfg)
    except (OSError, ValueError, ImportError) as e:  # FileNotFoundError: OSError; VocabMismatchError: ValueError;
        return _fail(str(e))  # ImportError: a codec whose optional dependencies are not installed
    print(result.text)
    t = result.timings
    print(f"finish: {result.finish_reason} | first text {_sec(t['first_text_s'])} | first audio block "
          f"{_sec(t['first_audio_block_s'])} | first audio {_sec(t['first_audio_s'])} | total {_sec(t['total_s'])} | "
          f"{result.codes.size} audio tokens, {t['audio_tokens_per_s']:.1f} audio tokens/s", file=sys.stderr)
    undecoded = result.codes.size > 0 and not lm.codec.can_decode  # a declared or encode-only codec
    if undecoded:
        where = f"they are in {args.out_json}" if args.out_json else "pass --out-json to keep them"
        print(f"codec {lm.codec.identity.name} has no decoder: {result.codes.size} audio codes not turned into "
              f"speech ({where})", file=sys.stderr)
    if args.out_wav:
        if result.waveform.size:
            write_audio(args.out_wav, result.waveform, result.sample_rate)
            print(f"wrote {args.out_wav} ({result.waveform.size / result.sample_rate:.2f} s)", file=sys.stderr)
        else:
            why = "no decoder" if undecoded else "no speech in the answer"
            print(f"{why}; {args.out_wav} not written", file=sys.stderr)
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps({
            "text": result.text, "finish_reason": result.finish_reason, "timings": t,
            "codes": result.codes.tolist(), "sample_rate": result.sample_rate, "sampler": sampler_settings(args),
            "codec": lm.codec.identity.to_dict(),  # the codec actually used (its weights' hash when it has weights)
        }, indent=2) + "\n")
    return 0


def _sec(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} s"


def _fail(message: str) -> int:
    print(f"ttt generate: {message}", file=sys.stderr)
    return 2
