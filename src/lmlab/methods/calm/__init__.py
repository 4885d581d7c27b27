"""CALM: composing two frozen models through cross-attention (calm_kv)."""
