"""Decoding: the block-wise diffusion sampler and the AR/NAR baseline decoders, the ragged KV cache, token choice,
and the speech-in/speech-out API over a checkpoint and its codec.
"""
