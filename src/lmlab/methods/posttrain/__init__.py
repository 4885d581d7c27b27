"""RL, SFT, SFT→RL and mixed RL+SFT on intermediate pre-training checkpoints (experiment rl_checkpoints)."""

# torch-free, so that the CLI parser can offer them as choices
PIPELINES = ("rl", "sft", "sft_gold", "sft_rl", "parallel_avg", "combined", "interleaved")
MIXED = ("parallel_avg", "combined", "interleaved")  # one RL backward per step: no ppo_epochs / minibatches
