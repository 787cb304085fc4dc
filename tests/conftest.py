import os
from pathlib import Path

import pytest
import torch

# Tests run on CPU with few threads; keep BLAS from oversubscribing the two cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory) -> Path:
    """A data folder holding the real MovieLens-100K, processed once per session.

    The recbole wheel is reused from the repo's data/raw/ cache when present (it is checked by
    sha256 either way), else fetched with pip.
    """
    from delrec_lib.config import DataConfig
    from delrec_lib.data import prepare_dataset

    data_dir = tmp_path_factory.mktemp("real-data")
    cached = REPO / "data" / "raw" / "recbole-1.2.1-py3-none-any.whl"
    if cached.is_file():
        (data_dir / "raw").mkdir()
        (data_dir / "raw" / cached.name).symlink_to(cached)
    prepare_dataset(DataConfig(), data_dir)
    return data_dir


@pytest.fixture(scope="session")
def real_data(real_data_dir):
    from delrec_lib.data import load_processed

    return load_processed(real_data_dir, "ml-100k")


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models: their matmuls gain nothing from threads, and on a shared 2-core
    machine an OpenMP team whose second thread is descheduled makes each one ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
