import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "LMLAB_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["LMLAB_DATA"] = str(SHARED_DATA)


@pytest.fixture
def shared_data() -> Path:
    """The real-data root (../shared/data or $LMLAB_DATA); skips with a reason when absent."""
    root = Path(os.environ.get("LMLAB_DATA", SHARED_DATA))
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent (set LMLAB_DATA)")
    return root
