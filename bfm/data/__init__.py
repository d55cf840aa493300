"""ExORL data: on-disk formats, download, reformatting and the sequence buffer (local collection:
``collection/``).

See docs/CONTRACTS.md for the API and ``data/batch.py`` for the exact window pairings.
"""

from bfm.data.batch import Batch, LabelledWindows
from bfm.data.buffer import SequenceBuffer
from bfm.data.exorl import (
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
    "read_episode",
    "read_manifest",
    "verify_dataset",
    "write_episode",
]
