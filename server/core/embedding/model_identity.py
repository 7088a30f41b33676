"""Which model produced a database's vectors: name, dimension, preprocessing and a weights digest.

The digest covers the weights, the preprocessing metadata and the domain centre subtracted from
the output, not the file bytes, so the default model converted on another machine (a fresh server
restoring from OSS) is the same model, while a fine-tune, another input size, another crop policy or
the same weights with another centre is not.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def model_identity(module: Any, meta: Any) -> dict[str, Any]:
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().float().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    from lookalike import modelfile

    identity = getattr(modelfile, "preprocessing_identity", None)
    if identity is not None:
        preprocessing = identity(meta)
    else:
        preprocessing = {k: v for k, v in json.loads(meta.to_json()).items() if k not in ("model_name", "extra")}
    digest.update(json.dumps(preprocessing, sort_keys=True).encode())
    center = getattr(meta, "center", None)
    if center is not None:
        digest.update(b"center")
        digest.update(np.asarray(center, dtype=np.float64).tobytes())
    return {
        "name": meta.model_name,
        "dimension": int(meta.output_dim),
        "preprocessing": preprocessing,
        "digest": digest.hexdigest(),
    }
