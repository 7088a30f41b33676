"""What the PAI-EAS JSON API takes and gives, per function, as pydantic models: the OpenAPI document.

Documentation only: the gateway (``http_gateway.py``) parses the raw body itself, so a bad
request still gets the PAI envelope with its stable ``error_code`` rather than FastAPI's 422.
``FUNCTIONS`` is the one table of function names (and their parameter models) that the
gateway dispatches on; ``tests/server/http/test_pai_openapi.py`` checks that every parameter
the gateway reads is declared here with the same type, required-ness and default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from lookalike.server import defaults
from lookalike.server.core.calls import DEFAULT_TOP_K
from lookalike.server.core.crop import MIN_CROP_PIXELS
from lookalike.server.core.validation import DATABASE_NAME, MAX_GROUP_ID_LEN, MAX_INTRA_ID, MAX_LOCATION_LEN
from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model
from pydantic.json_schema import models_json_schema

IMAGE = (
    "the image: base64 of the encoded file bytes (JPEG, PNG, WebP, BMP, GIF, TIFF; at most the server's "
    f"--max-image-bytes, default {defaults.MAX_IMAGE_BYTES >> 20} MiB), or an oss:// path the server reads "
    "with init's credentials"
)
DatabaseName = Annotated[str, Field(description="the database: 1-63 letters, digits, '-' or '_', starting with a "
                                    "letter or digit", pattern=f"^{DATABASE_NAME.pattern}$", max_length=63,
                                    examples=["shop"])]  # fmt: skip
GroupId = Annotated[str | int, Field(description="the group (a product, a person, a scene); an integer is taken "
                                     f"as its decimal string; 1-{MAX_GROUP_ID_LEN} printable characters",
                                     examples=["sku-42"])]  # fmt: skip
IntraId = Annotated[int, Field(ge=0, le=MAX_INTRA_ID - 1, description="the image's number inside its group")]
Image = Annotated[str, Field(min_length=1, description=IMAGE)]
CROP = (
    "only this region of {image}: [x, y, width, height] as fractions of the upright image (EXIF orientation "
    "applied first), each in [0, 1], width and height above 0, x + width <= 1, y + height <= 1; rounded to whole "
    f"pixels, at least {MIN_CROP_PIXELS} on a side (else error_code CROP_INVALID); default: the whole image"
)


def crop_field(image: str) -> Any:
    return Field(None, min_length=4, max_length=4, description=CROP.format(image=image),
                 examples=[[0.25, 0.25, 0.5, 0.5]])  # fmt: skip


class Params(BaseModel):
    """Unknown parameters are ignored by the gateway; ``null`` means the same as leaving one out."""

    model_config = ConfigDict(extra="allow")


class InitParams(Params):
    """Where ``save`` and ``load`` write and read, and the OSS credentials for oss:// images, lists and roots.

    The credentials stay in the server's memory only (never logged, never written)."""

    backend: Literal["oss", "local"] | None = Field("local", description="'oss' needs an oss:// root_path")
    root_path: str | None = Field(None, max_length=MAX_LOCATION_LEN, description="oss://bucket/prefix/, or a "
                                  "directory on the server; save and load use <root_path><database_name>/")  # fmt: skip
    oss_io_config: OssIoConfig | None = Field(None, description="with backend 'oss': the credentials and endpoint")


class OssIoConfig(Params):
    """PAI's ``oss_io_config``; without ``ak_id`` and ``ak_secret`` the server's own OSS settings are used."""

    ak_id: str | None = Field(None, description="AccessKey ID")
    ak_secret: str | None = Field(None, description="AccessKey secret", json_schema_extra={"format": "password"})
    hosts: str | None = Field(None, description="the OSS endpoint, e.g. oss-cn-shanghai.aliyuncs.com "
                              "(https:// when no scheme is given)")  # fmt: skip
    buckets: list[str] | None = Field(None, description="accepted for PAI scripts and ignored: the paths name "
                                      "their bucket")  # fmt: skip


InitParams.model_rebuild()


class AddParams(Params):
    """Create a database (the server's model fixes the feature dimension; the metric is cosine)."""

    database_name: DatabaseName
    feature_dim_dict: dict[str, int] | None = Field(None, description="e.g. {\"feature\": 1280}: each value "
                                                    "must equal the served model's dimension (DIMENSION_MISMATCH "
                                                    "says which)", examples=[{"feature": 1280}])  # fmt: skip
    feature_distance_dict: dict[str, str] | None = Field(None, description="e.g. {\"feature\": \"Cosine\"}: only "
                                                         "Cosine (or inner_product, ip: the same on unit vectors)",
                                                         examples=[{"feature": "Cosine"}])  # fmt: skip


class DeleteParams(Params):
    """Delete a database and every image in it."""

    database_name: DatabaseName


class GetParams(Params):
    """Sizes of one database, or of all of them when ``database_name`` is left out."""

    database_name: DatabaseName | None = None


class SaveParams(Params):
    """Export a database (all of them when ``database_name`` is left out) under init's ``root_path``."""

    database_name: DatabaseName | None = None


class LoadParams(Params):
    """Replace a database with its export under init's ``root_path``, atomically."""

    database_name: DatabaseName


class SetParams(Params):
    """The old-style bulk set: an image list on OSS, ``path[,group_id[,intra_id]]`` per line.

    Relative paths are taken from the list's folder; group_id defaults to the file name without
    its extension. Bad lines are reported in ``failures`` by number, the rest are registered, a chunk at a
    time as the list is read; every path must lie under the server's ``--oss-allow`` prefixes, and a list
    of more than ``--max-list-items`` entries is refused (LIST_TOO_LONG) before any image is read."""

    database_name: DatabaseName
    filelist: str = Field(description="oss://bucket/path/list.txt (never a file on the server)",
                          pattern="^oss://", examples=["oss://my-bucket/catalogue/list.txt"])  # fmt: skip


class DbSetParams(Params):
    """Register an image (or replace the one at group_id + intra_id)."""

    database_name: DatabaseName
    group_id: GroupId
    intra_id: IntraId | None = Field(None, description="the image's number in its group; default: the next free one")
    image: Image
    data: str | None = Field(None, description="free-form text kept with the image and returned with its hits")
    savename: str | None = Field(None, description="a file name kept with the image and returned with its hits")


class DbGetParams(Params):
    """The stored entries of a group, or of one image in it."""

    database_name: DatabaseName
    group_id: GroupId
    intra_id: IntraId | None = Field(None, description="one image; default: the whole group")


class DbDeleteParams(Params):
    """Delete one image, or a whole group."""

    database_name: DatabaseName
    group_id: GroupId
    intra_id: IntraId | None = Field(None, description="one image; default: the whole group")


class DbSearchParams(Params):
    """The registered images most similar to a query image, best first."""

    database_name: DatabaseName
    image: Image
    search_topk: int | None = Field(DEFAULT_TOP_K, ge=1, le=defaults.MAX_TOP_K, description="how many hits; at "
                                    "most the server's --max-top-k (default shown as the maximum)")  # fmt: skip
    crop: list[Annotated[float, Field(ge=0, le=1)]] | None = crop_field("the query image (a product in a scene)")


class DbCleanParams(Params):
    """Remove every image, keep the database."""

    database_name: DatabaseName


# The one table: function_name -> its function_params, in the order the errors list them.
FUNCTIONS: dict[str, type[Params]] = {
    "init": InitParams, "add": AddParams, "delete": DeleteParams, "get": GetParams, "save": SaveParams,
    "load": LoadParams, "set": SetParams, "db_set": DbSetParams, "db_get": DbGetParams,
    "db_delete": DbDeleteParams, "db_search": DbSearchParams, "db_clean": DbCleanParams,
}  # fmt: skip


class MatchRequest(BaseModel):
    """Image matching: how similar two images are."""

    imagea: Image
    imageb: Image
    crop_a: list[Annotated[float, Field(ge=0, le=1)]] | None = crop_field("imagea")
    crop_b: list[Annotated[float, Field(ge=0, le=1)]] | None = crop_field("imageb")


def _request(name: str, params: type[Params]) -> type[BaseModel]:
    """``{"function_name": name, "function_params": params}``, described by the params' docstring."""
    title = "".join(part.title() for part in name.split("_")) + "Request"
    required = params.model_json_schema().get("required")
    model: type[BaseModel] = create_model(
        title,
        __doc__=f"function_name {name!r}: {params.__doc__}",
        function_name=(Literal[name], ...),  # type: ignore[valid-type]
        function_params=(params, ... if required else None),
    )
    return model


REQUESTS: dict[str, type[BaseModel]] = {name: _request(name, params) for name, params in FUNCTIONS.items()}
Retrieval = Annotated[Union[tuple(REQUESTS.values())], Field(discriminator="function_name")]  # type: ignore[valid-type]  # noqa: UP007


class PaiRequest(RootModel[Union[MatchRequest, Retrieval]]):  # type: ignore[valid-type]  # noqa: UP007
    """The body of ``POST /`` and ``POST /api/predict/<service_name>``: matching, or a retrieval function."""


class Envelope(BaseModel):
    """Every answer: success or not, with a stable ``error_code`` and a message that says what to fix."""

    request_id: str = Field(description="this request's id, also in the server's log")
    success: bool
    status: int = Field(description="the HTTP status again: 200, or 4xx/5xx")
    info: str = Field(description="a short success message for some functions")
    error_code: str = Field(description="empty on success; else stable, e.g. PARAM_MISSING, DATABASE_NOT_FOUND")
    error_msg: str = Field(description="empty on success; else what went wrong and how to fix it")


class DatabaseInfo(BaseModel):
    size: int = Field(description="images")
    groups: int
    dimension: int


class ImageKey(BaseModel):
    group_id: str
    intra_id: int


class StoredEntry(ImageKey):
    update_time: float = Field(description="seconds since the epoch")


class SetFailure(BaseModel):
    line: int = Field(description="the list's line, from 1 (its text and what the store sent are never echoed)")
    error_code: str
    error_msg: str | None = None


class SearchHit(ImageKey):
    score: float = Field(description="similarity in [0, 1]")
    attributes: dict[str, str] = Field(description="what was stored with the image: data, savename, source")


def _response(title: str, /, **fields: Any) -> type[Envelope]:
    return create_model(title, __base__=Envelope, **fields)  # type: ignore[no-any-return, call-overload]


# What each function adds to the envelope on success.
RESPONSES: dict[str, type[Envelope]] = {
    "match": _response("MatchResponse", similarity=(float, Field(ge=0, le=1)), cosine=(float, ...), model=(str, ...)),
    "init": _response("InitResponse"),
    "add": _response("AddResponse", name=(str, ...)),
    "delete": _response("DeleteResponse"),
    "get": _response("GetResponse", db_dict=(dict[str, DatabaseInfo], ...)),
    "save": _response("SaveResponse", saved=(dict[str, int], Field(description="images saved per database"))),
    "load": _response("LoadResponse", loaded=(dict[str, int], Field(description="images loaded per database"))),
    "set": _response(
        "SetResponse",
        succeeded=(int, ...),
        failed=(int, ...),
        failures=(list[SetFailure], ...),
        keys=(list[ImageKey], ...),
    ),  # fmt: skip
    "db_set": _response("DbSetResponse", group_id=(str, ...), intra_id=(int, ...), replaced=(bool, ...)),
    "db_get": _response("DbGetResponse", entries=(list[StoredEntry], ...)),
    "db_delete": _response("DbDeleteResponse", deleted=(int, Field(description="images deleted"))),
    "db_search": _response(
        "DbSearchResponse", results=(list[SearchHit], ...), searched=(int, Field(description="images compared"))
    ),  # fmt: skip
    "db_clean": _response("DbCleanResponse", cleaned=(int, Field(description="images removed"))),
}


def components() -> dict[str, Any]:
    """The OpenAPI ``components.schemas``: every model above, referenced as ``#/components/schemas/<name>``."""
    models = [PaiRequest, Envelope, *RESPONSES.values()]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    return dict(top["$defs"])


def operation(*, path_parameter: str | None = None) -> dict[str, Any]:
    """``openapi_extra`` of a predict route: the request body, the answers and (for the PAI path) the service name."""
    ref = "#/components/schemas/"
    answers = {"anyOf": [{"$ref": ref + m.__name__} for m in RESPONSES.values()]}
    failure = {"content": {"application/json": {"schema": {"$ref": ref + "Envelope"}}}}
    extra: dict[str, Any] = {
        "requestBody": {"content": {"application/json": {"schema": {"$ref": ref + "PaiRequest"}}}, "required": True},
        "responses": {
            "200": {"description": "The envelope with the function's fields",
                    "content": {"application/json": {"schema": answers}}},
            "4XX": {"description": "A refused request: success false and a stable error_code", **failure},
            "5XX": {"description": "The server could not answer (error_code INTERNAL, OSS_UNAVAILABLE, ...)",
                    **failure},
        },
    }  # fmt: skip
    if path_parameter:
        extra["parameters"] = [{"name": path_parameter, "in": "path", "required": True, "schema": {"type": "string"},
                                "description": "any name, as in the PAI-EAS URL; it is not checked"}]  # fmt: skip
    return extra


__all__ = ["FUNCTIONS", "REQUESTS", "RESPONSES", "MatchRequest", "PaiRequest", "components", "operation"]
