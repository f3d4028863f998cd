import pytest
from stores import build_token_store


@pytest.fixture(scope="session")
def small_store(tmp_path_factory):
    """A labelled 3-class webdataset store (bestrq, 1.5 kbps) built once per test session; treat it as read-only."""
    return build_token_store(tmp_path_factory.mktemp("small_store"), fmt="wds")


@pytest.fixture(scope="session")
def small_zarr_store(tmp_path_factory):
    """The same clips as `small_store`, in a zarr store; read-only."""
    return build_token_store(tmp_path_factory.mktemp("small_zarr_store"), fmt="zarr")


@pytest.fixture(scope="session")
def logmel_store(tmp_path_factory):
    """bestrq 1.5 kbps codes with their log-mel frames stored (--store-features logmel); read-only."""
    return build_token_store(tmp_path_factory.mktemp("logmel_store"), per_class=3, store_features="logmel")
