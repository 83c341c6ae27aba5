"""The model core: the Qwen2 model, the modality-aware attention mask, the hybrid objective (noising, targets), the
BANOM/PPM/SST strategies, the loss, packing and the collator that turns shard rows into packed batches, and the
model checkpoint format.
"""
