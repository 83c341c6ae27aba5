"""`ttt codec encode|decode`: audio file <-> codec ids (.npy), to listen to what the model sees and says.

    ttt codec encode question.wav question.npy                  # the codec of the project config
    ttt codec decode answer.npy answer.wav --codec-path runs/exp1/codec/embedded

Without --codec-path the codec is the `codec` group of the composed project config (by default the
embedded codec fitted by `prepare_data` under paths.root, i.e. runs/local/codec/embedded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent / "conf"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "codec",
        help="encode audio to codec ids (.npy) or decode ids back to audio",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = p.add_subparsers(dest="codec_command", required=True, metavar="{encode,decode}")
    encode = commands.add_parser("encode", help="IN audio (wav/flac/mp3/ogg) -> OUT .npy of int64 ids")
    encode.add_argument("input", type=Path, metavar="IN")
    encode.add_argument("output", type=Path, metavar="OUT")
    encode.set_defaults(func=run_encode)
    decode = commands.add_parser("decode", help="IN .npy of ids -> OUT audio (format from the suffix)")
    decode.add_argument("input", type=Path, metavar="IN")
    decode.add_argument("output", type=Path, metavar="OUT")
    decode.set_defaults(func=run_decode)
    for sub in (encode, decode):
        sub.add_argument(
            "--codec-path",
            type=Path,
            metavar="DIR",
            help="a fitted embedded codec directory (default: codec of the project config)",
        )


def load_codec(codec_path: Path | None) -> Any:
    """The embedded codec in `codec_path`, or the codec the composed project config describes."""
    if codec_path is not None:
        from tokenization.codecs.embedded import EmbeddedCodec

        return EmbeddedCodec.load(codec_path.expanduser())
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tokenization.codecs import build_codec

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config")
    return build_codec(OmegaConf.to_container(cfg.codec, resolve=True))


def run_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from tokenization.audio import load_audio

    try:
        codec = load_codec(args.codec_path)
        wav, sr, _ = load_audio(args.input)
        codes = codec.encode(wav, sr)
    except (OSError, ValueError, RuntimeError) as e:  # soundfile's LibsndfileError is a RuntimeError
        return _fail(str(e))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, codes)
    seconds = len(wav) / sr
    print(
        f"wrote {args.output}: {codes.size} codes for {seconds:.2f} s ({codec.identity.name}, "
        f"{codec.identity.token_rate:g} codes/s)",
        file=sys.stderr,
    )
    return 0


def run_decode(args: argparse.Namespace) -> int:
    import numpy as np

    from tokenization.audio import write_audio

    try:
        codec = load_codec(args.codec_path)
        codes = np.load(args.input, allow_pickle=False)
        audio, sr = codec.decode(codes)
    except (OSError, ValueError) as e:
        return _fail(str(e))
    write_audio(args.output, audio, sr)
    print(f"wrote {args.output}: {len(audio) / sr:.2f} s at {sr} Hz from {codes.size} codes", file=sys.stderr)
    return 0


def _fail(message: str) -> int:
    print(f"ttt codec: {message}", file=sys.stderr)
    return 2
