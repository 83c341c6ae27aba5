"""Small helpers shared by every layer (tokenization, ttt_model, pipelines, workflows).

The bottom of the package layering: it imports nothing from this project, only the standard library, so
any package may import it. Each helper exists once here instead of being rewritten per module:

    config_tools.py   reject_unknown_keys (config typos fail loudly), config_digest (run fingerprints)
    files.py          atomic_write / atomic_path / atomic_write_text (files appear complete or not at all)
"""
