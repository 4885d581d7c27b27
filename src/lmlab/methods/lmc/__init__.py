"""Linear mode connectivity: barriers, basins and generalization strategies (lmc_basins)."""

BARRIER_KINDS = ("mod_bh", "endpoint")  # torch-free, so that the CLI parser can offer them as choices
