"""Shared fixtures: real photos from ../shared/data when present, scikit-image's otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when this checkout has none beside it."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is only beside development checkouts)")
    return path


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    from skimage import data

    return data.coffee()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small ops on busy CI cores stall at thread barriers (seconds per image); 1 is fast."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """One real ``prefect server`` for the session: ``(api_url, its PREFECT_HOME)``.

    Builds that are not about Prefect's own temporary server report to it, so each of them
    skips the ~10 s that server takes to start; the tests of the README's local mode, of Ctrl-C
    and of crashes keep the temporary one. Give each build its own home with
    ``loopback.prefect_env(home, api_url)``.
    """
    import loopback

    root = tmp_path_factory.mktemp("prefect-session")
    server, url = loopback.start_prefect_server(root / "home", root / "logs")
    try:
        yield url, root / "home"
    finally:
        server.stop()
