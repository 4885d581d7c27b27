"""Query-only test-time training for long context, vs. thinking tokens (long_context_ttt)."""
