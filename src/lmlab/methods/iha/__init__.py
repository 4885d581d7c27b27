"""Interleaved Head Attention: the "iha" attention variant and its synthetic tasks (iha_synthetic)."""
