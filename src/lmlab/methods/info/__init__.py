"""Information measures of neuron activations that reveal memorization (info_memorization)."""

MEMORIZATION = ("heuristic", "example")  # the kinds of planted memorization (torch-free: the CLI reads it)
