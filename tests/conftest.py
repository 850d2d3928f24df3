import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from tests.helpers import make_run, run  # noqa: E402


@pytest.fixture(scope="session")
def local_finished(tmp_path_factory) -> Path:
    """The standard small workflow (3 images x 3 outputs, offline `local` provider), run once per
    test session (per xdist worker); tests take a copy with ``helpers.clone``."""
    wf = make_run(tmp_path_factory.mktemp("local_finished"))
    run(wf)
    return wf
