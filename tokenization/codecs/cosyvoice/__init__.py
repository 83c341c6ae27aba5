"""CosyVoice flow-matching + HiFT decoder (speech codes -> 22.05 kHz waveform) as our own torch modules.

The modules mirror CosyVoice v1 / GLM-4-Voice-Decoder closely enough that the released `flow.pt` and
`hift.pt` state dicts load with `strict=True`: same module tree, same parameter names, same numerics.
The public entry point is `tokenization.codecs.cosyvoice_decoder`; this package holds the parts:

- `conformer`: the token encoder (Conformer with ESPnet relative positions, plain or block-causal).
- `estimator`: the U-Net vector-field estimator of the flow-matching decoder.
- `flow`: length regulator, conditional flow matching (Euler + classifier-free guidance), the flow model.
- `hift`: the HiFT vocoder (neural source filter + iSTFT head).
- `config`: reads the upstream HyperPyYAML `config.yaml` without hyperpyyaml or cosyvoice installed.
- `streaming`: GLM-4-Voice's block-wise token2wav (mel overlap fade + vocoder cache).
- `random_init`: writes a model directory with the real architecture and random weights.
"""
