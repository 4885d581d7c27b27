"""Task competition across scale: interference, rare-task retention, unit allocation (task_competition)."""
