"""Proto <-> core conversions shared by the servicers."""

from __future__ import annotations

import numpy as np
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from lookalike.server.core.service import Crop, DatabaseHandle, Entry
from lookalike.v1 import database_service_pb2 as db_pb
from lookalike.v1 import types_pb2


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def crop(message: Message, field: str) -> Crop | None:
    """The ``field`` Crop of a request as the core takes it; None when it is unset."""
    if not message.HasField(field):
        return None
    box = getattr(message, field)
    return Crop(box.x, box.y, box.width, box.height)


def vector(values: np.ndarray) -> types_pb2.Vector:
    return types_pb2.Vector(values=values.tolist())


def database(db: DatabaseHandle, model_name: str = "", reindex_operation: str = "") -> db_pb.Database:
    """``model_name``: the loaded model it is bound to ("" when not loaded, or unknown to the caller)."""
    return db_pb.Database(
        name=db.name,
        dimension=db.dimension,
        metric=db.metric,
        image_count=db.size,
        group_count=db.group_count,
        create_time=timestamp(db.create_time),
        model=f"{db.model.get('name', '')}@{str(db.model.get('digest', ''))[:12]}",
        storage=db.storage,
        keep=db.keep,
        model_name=model_name,
        model_loaded=bool(model_name),
        reindex_operation=reindex_operation,
    )


def registered_image(entry: Entry, *, include_vector: bool) -> db_pb.RegisteredImage:
    msg = db_pb.RegisteredImage(
        key=types_pb2.ImageKey(group_id=entry.group_id, intra_id=entry.intra_id),
        update_time=timestamp(entry.update_time),
        attributes=entry.attributes,
    )
    if include_vector:
        msg.vector.CopyFrom(vector(entry.vector))
    return msg
