"""ExORL data: on-disk formats, download, local collection, reformatting and the sequence buffer.

See docs/CONTRACTS.md for the API and ``data/batch.py`` for the exact window pairings.
"""

from data.batch import Batch, LabelledWindows
from data.buffer import SequenceBuffer
from data.exorl import (
    DATASET_FILE,
    FORMAT_VERSION,
    DatasetError,
    DatasetNotFoundError,
    buffer_dir,
    dataset_path,
    list_episode_files,
    read_episode,
    read_manifest,
    verify_dataset,
    write_episode,
)
from data.synthetic import make_synthetic_dataset

__all__ = [
    "DATASET_FILE",
    "FORMAT_VERSION",
    "Batch",
    "DatasetError",
    "DatasetNotFoundError",
    "LabelledWindows",
    "SequenceBuffer",
    "buffer_dir",
    "dataset_path",
    "list_episode_files",
    "make_synthetic_dataset",
    "read_episode",
    "read_manifest",
    "verify_dataset",
    "write_episode",
]
