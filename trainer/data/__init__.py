"""Training data: image lists, folders and ``oss://`` keys, tar shards, multi-crop views.

Every reader skips unreadable images and counts them instead of failing the run: a list of a
million web images always holds a few broken files, and a crash at hour ten costs more than a
missing sample.
"""

from lookalike.trainer.data.augment import MultiCropAugment
from lookalike.trainer.data.dataset import ViewsDataset, collate_views
from lookalike.trainer.data.images import UnreadableImage, decode_image, load_image
from lookalike.trainer.data.shards import ShardSource, write_manifest
from lookalike.trainer.data.skips import SkipLog
from lookalike.trainer.data.sources import ListSource, open_source, read_image_list

__all__ = [
    "ListSource",
    "MultiCropAugment",
    "ShardSource",
    "SkipLog",
    "UnreadableImage",
    "ViewsDataset",
    "collate_views",
    "decode_image",
    "load_image",
    "open_source",
    "read_image_list",
    "write_manifest",
]
