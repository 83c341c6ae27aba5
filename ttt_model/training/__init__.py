"""Training: the run plan and settings, each rank's data stream, the loop, resume checkpoints, the optimiser, held-
out validation losses and telemetry (FLOPs/MFU, metric sinks).
"""
