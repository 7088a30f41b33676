"""Region search (issue 24): a crop of the query image, over gRPC, the PAI JSON API and the CLI.

One real server (default model) with both wires; real photos from the scikit-image wheel.
"""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import requests
from lookalike.client import ClientError, LookalikeClient
from photos import encode, exif_jpeg
from PIL import Image, ImageOps

# "cat" is "chelsea"'s pixels again: left out of the catalogue.
CATALOGUE = ("chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field", "immunohistochemistry")
DB = "regions"


@pytest.fixture(scope="module")
def server(tmp_path_factory, photos):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    running = create_server(ServerConfig(port=0, http_port=0, snapshot_interval_s=0,
                                         data_dir=tmp_path_factory.mktemp("regions")))  # fmt: skip
    with LookalikeClient(running.address) as c:
        c.create_database(DB)
        for name in CATALOGUE:
            c.set_image(DB, name, image=encode(photos[name], quality=95), intra_id=0)
        yield running, c
    running.stop(0)


def pai(server, body: dict) -> requests.Response:
    running, _ = server
    url = f"http://127.0.0.1:{running.http_port}/api/predict/regions"
    return requests.post(url, data=json.dumps(body), timeout=120)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ranking(response) -> list[str]:
    return [h.key.group_id for h in response.hits]


def pixel_crop(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """The crop as a client would cut it: each edge to the nearest pixel."""
    x, y, w, h = box
    edge = lambda f, n: math.floor(f * n + 0.5)  # noqa: E731
    return img.crop((edge(x, img.width), edge(y, img.height), edge(x + w, img.width), edge(y + h, img.height)))


@pytest.fixture(scope="module")
def scene(photos) -> tuple[bytes, tuple[float, float, float, float]]:
    """A 1600x1200 JPEG scene: four other photos tiled, the rocket pasted small (1/5 of the width) in it;
    and the crop box around the rocket, as fractions."""
    canvas = Image.new("RGB", (1600, 1200))
    for (left, top), name in zip([(0, 0), (800, 0), (0, 600), (800, 600)],
                                 ["coffee", "astronaut", "chelsea", "camera"], strict=True):  # fmt: skip
        canvas.paste(Image.fromarray(photos[name]).resize((800, 600), Image.BICUBIC), (left, top))
    product = Image.fromarray(photos["rocket"]).resize((320, 214), Image.BICUBIC)
    left, top = 1040, 260
    canvas.paste(product, (left, top))
    box = (left / 1600, top / 1200, 320 / 1600, 214 / 1200)
    return encode(canvas, quality=92), box


def test_a_product_in_a_scene_is_found_by_a_crop_where_the_whole_scene_misses_it(server, scene):
    _, c = server
    image, box = scene
    whole = ranking(c.search(DB, image=image, top_k=3))
    assert whole[0] != "rocket", whole  # the scene is found as the photos it is made of
    assert "rocket" not in whole, whole

    cropped = c.search(DB, image=image, top_k=3, crop=box)
    assert ranking(cropped)[0] == "rocket", ranking(cropped)
    assert cropped.hits[0].score > cropped.hits[1].score + 0.1

    # A box a few pixels looser still finds it: rounding and a sloppy drag do not matter.
    x, y, w, h = box
    loose = (x - 0.01, y - 0.01, w + 0.02, h + 0.02)
    assert ranking(c.search(DB, image=image, top_k=1, crop=loose)) == ["rocket"]


def test_match_compares_a_cropped_region_with_the_product_photo(server, scene, photos):
    _, c = server
    image, box = scene
    product = encode(photos["rocket"], quality=95)
    whole = c.match(image, product).cosine
    cropped = c.match(image, product, crop_a=box).cosine
    both = c.match(product, image, crop_b=box).cosine
    assert cropped > whole + 0.2, (whole, cropped)
    assert both == pytest.approx(cropped, abs=1e-4)


def test_a_crop_equals_the_image_cropped_by_the_client(server, photos):
    """A large JPEG (the server decodes it at a draft scale that still leaves the region its pixels) and a crop:
    the same vector as the client's own crop of the full decode, sent as a PNG."""
    _, c = server
    big = Image.fromarray(photos["astronaut"]).resize((2400, 1800), Image.BICUBIC)
    image = encode(big, quality=95)
    box = (0.2, 0.1, 0.6, 0.7)
    by_client = encode(pixel_crop(Image.open(io.BytesIO(image)).convert("RGB"), box), "PNG")
    assert c.match(image, by_client, crop_a=box).cosine > 0.999
    assert c.match(by_client, image, crop_b=box).cosine > 0.999

    served, local = c.search(DB, image=image, top_k=3, crop=box), c.search(DB, image=by_client, top_k=3)
    assert ranking(served) == ranking(local)
    np.testing.assert_allclose([h.score for h in served.hits], [h.score for h in local.hits], atol=1e-3)


@pytest.mark.parametrize("orientation", [6, 3, 8])
def test_a_crop_applies_to_the_upright_image_of_an_exif_rotated_jpeg(server, photos, orientation):
    _, c = server
    upright = Image.fromarray(photos["coffee"])  # 600x400: not square, so a rotation changes the box
    stored = upright.transpose(
        {6: Image.Transpose.ROTATE_90, 3: Image.Transpose.ROTATE_180, 8: Image.Transpose.ROTATE_270}[orientation]
    )
    image = exif_jpeg(stored, orientation)
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(image))).convert("RGB")
    assert shown.size == upright.size
    box = (0.05, 0.1, 0.5, 0.8)  # the left half: the cup's left part, not symmetric under rotation
    by_client = encode(pixel_crop(shown, box), "PNG")
    assert c.match(image, by_client, crop_a=box).cosine > 0.999
    # The same box on the stored (unrotated) pixels is another region: the crop is not taken before the rotation.
    raw = encode(stored, quality=95)
    assert c.match(raw, by_client, crop_a=box).cosine < 0.99


BAD_BOXES = [
    ("zero width", (0.1, 0.1, 0.0, 0.5), "an empty box"),
    ("past the right edge", (0.6, 0.0, 0.5, 0.5), "past the image's right edge"),
    ("past the bottom edge", (0.0, 0.7, 0.5, 0.31), "past the image's bottom edge"),
    ("negative", (-0.1, 0.0, 0.5, 0.5), "outside [0, 1]"),
    ("not finite", (0.0, 0.0, float("nan"), 0.5), "outside [0, 1]"),
    ("a few pixels", (0.5, 0.5, 0.01, 0.01), "under 8 pixels on a side"),
]


@pytest.mark.parametrize("box, says", [b[1:] for b in BAD_BOXES], ids=[b[0] for b in BAD_BOXES])
def test_a_bad_box_gets_the_same_answer_on_both_wires(server, photos, box, says):
    _, c = server
    image = encode(photos["chelsea"])  # 451x300: 0.01 of it is 5x3 pixels
    with pytest.raises(ClientError) as search_error:
        c.search(DB, image=image, crop=box)
    with pytest.raises(ClientError) as match_error:
        c.match(image, image, crop_b=box)
    on_grpc = [(e.value.code, e.value.reason) for e in (search_error, match_error)]
    assert on_grpc == [("INVALID_ARGUMENT", "CROP_INVALID")] * 2
    assert says in search_error.value.message and search_error.value.message.startswith("crop ")
    assert says in match_error.value.message and match_error.value.message.startswith("crop_b ")
    advice = "make the box larger" if says.startswith("under") else "x, y, width, height"
    assert advice in search_error.value.message

    as_json = [None if math.isnan(v) else v for v in box]  # JSON has no NaN: null is as wrong
    params = {"database_name": DB, "image": b64(image), "crop": as_json}
    searched = pai(server, {"function_name": "db_search", "function_params": params})
    matched = pai(server, {"imagea": b64(image), "imageb": b64(image), "crop_b": as_json})
    for r in (searched, matched):
        body = r.json()
        assert (r.status_code, body["success"], body["error_code"]) == (400, False, "CROP_INVALID"), body
    if not any(v is None for v in as_json):  # the same words on both wires
        assert searched.json()["error_msg"] == search_error.value.message
        assert matched.json()["error_msg"] == match_error.value.message


def test_only_an_image_query_can_be_cropped(server):
    _, c = server
    for query in ({"vector": [1.0] * 1280}, {"registered": ("rocket", 0)}):
        with pytest.raises(ClientError) as info:
            c.search(DB, crop=(0.0, 0.0, 0.5, 0.5), **query)
        assert (info.value.code, info.value.reason) == ("INVALID_ARGUMENT", "CROP_INVALID")
        assert "only an image query can be cropped" in info.value.message


def test_pai_crop_must_be_four_numbers(server, photos):
    image = b64(encode(photos["chelsea"]))
    for crop, code in (([0.0, 0.0, 0.5], "CROP_INVALID"), (["0", 0, 1, 1], "CROP_INVALID"),
                       ("0,0,1,1", "PARAM_INVALID")):  # fmt: skip
        params = {"database_name": DB, "image": image, "crop": crop}
        r = pai(server, {"function_name": "db_search", "function_params": params})
        assert (r.status_code, r.json()["error_code"]) == (400, code), r.json()
    r = pai(server, {"imagea": image, "imageb": image, "crop_a": {"x": 0}})
    assert (r.status_code, r.json()["error_code"]) == (400, "PARAM_INVALID")


def test_pai_db_search_and_match_with_a_crop(server, scene):
    image, box = scene
    params = {"database_name": DB, "image": b64(image), "search_topk": 2, "crop": list(box)}
    body = pai(server, {"function_name": "db_search", "function_params": params}).json()
    assert body["success"] and body["results"][0]["group_id"] == "rocket", body
    _, c = server
    assert c.search(DB, image=image, top_k=1, crop=box).hits[0].score == pytest.approx(
        body["results"][0]["score"], abs=1e-5
    )
    same = pai(server, {"imagea": b64(image), "imageb": b64(image), "crop_a": list(box), "crop_b": list(box)}).json()
    assert same["success"] and same["cosine"] == pytest.approx(1.0, abs=1e-5)


def test_cli_search_with_crop(server, scene, tmp_path, capsys):
    from lookalike.cli import main

    running, _ = server
    image, box = scene
    path = tmp_path / "scene.jpg"
    path.write_bytes(image)
    crop = ",".join(f"{v:.6f}" for v in box)
    assert main(["search", "--db", DB, str(path), "--crop", crop, "--top-k", "1", "--json",
                 "--server", running.address]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["hits"][0]["group_id"] == "rocket"

    assert main(["search", "--db", DB, str(path), "--crop", "0.9,0.9,0.5,0.5", "--server", running.address]) == 2
    err = capsys.readouterr().err
    assert "CROP_INVALID" in err and "past the image's right edge" in err


@pytest.mark.parametrize("value", ["0.1,0.2,0.3", "a,b,c,d", "0.1,0.2,0.3,0.4,0.5", "0.1 0.2 0.3 0.4", "1,1,2,2"])
def test_cli_crop_that_is_not_a_box_is_a_usage_error(value, capsys):
    from lookalike.cli import main

    with pytest.raises(SystemExit) as info:
        main(["search", "--db", DB, "scene.jpg", "--crop", value, "--server", "127.0.0.1:1"])
    assert info.value.code == 64
    err = capsys.readouterr().err
    assert f"argument --crop: {value!r} is not a box: give x,y,w,h" in err and "--crop 0.25,0.25,0.5,0.5" in err
