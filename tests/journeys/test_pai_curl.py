"""The README's PAI curl examples, pasted in order into a shell against a real ``lookalike serve``.

Each ```sh block of the section that calls curl runs with the real ``curl`` and ``bash``, with
``LOOKALIKE_HTTP`` and ``LOOKALIKE_TOKEN`` set as the section's first block says, in a folder
holding the images it names; its answer must agree with the ``# {...}`` line under the call
(``...`` elides fields; documented numbers with a fraction only need to be numbers) and fit the
function's response model in ``pai_schema.py``. So a wrong README example fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lookalike.server.transport.pai_schema import FUNCTIONS, RESPONSES, PaiRequest
from moto_s3 import S3
from photos import crop, encode, photo
from served import serving

README = Path(__file__).resolve().parents[2] / "README.md"
TOKEN = "curl-journey-token"
LOCAL_ROOT = '"root_path": "pai/"'  # the README's server-side root: relative to the server's --export-root
OSS_HOST = "oss-cn-shanghai.aliyuncs.com"  # the README's endpoint: here a local S3-protocol server
BUCKET = "my-bucket"


def section() -> str:
    """The PAI subsection of the README, up to the next chapter (``# {...}`` lines in blocks are not headings)."""
    text = README.read_text()
    start = text.index("### PAI-EAS JSON API (HTTP)")
    return text[start : text.index("\n## ", start)]


def examples() -> list[str]:
    return [b for b in re.findall(r"```sh\n(.*?)```", section(), re.S) if "curl " in b]


def documented(block: str) -> dict[str, Any]:
    """The ``# {...}`` answer under a call, with its ``, ...`` elisions removed."""
    lines = [line[2:] for line in block.splitlines() if line.startswith("# {")]
    assert len(lines) == 1, f"one documented answer per example:\n{block}"
    return json.loads(lines[0].replace(", ...", ""))


def function_of(block: str) -> str:
    found = re.search(r'"function_name": "(\w+)"', block)
    return found.group(1) if found else "match"


def request_of(block: str) -> dict[str, Any]:
    """The JSON a block sends (``%s`` placeholders of printf as a tiny base64 string)."""
    found = re.search(r"'(\{.*\})'", block)
    assert found, f"no JSON body in:\n{block}"
    return json.loads(found.group(1).replace("%s", "AAAA"))


def agrees(doc: Any, real: Any, where: str = "answer") -> None:
    """``real`` holds what ``doc`` shows: every key, list item and value (fractional numbers: any number)."""
    if isinstance(doc, dict):
        assert isinstance(real, dict), where
        for key, value in doc.items():
            assert key in real, f"{where}.{key} is missing"
            agrees(value, real[key], f"{where}.{key}")
    elif isinstance(doc, list):
        assert isinstance(real, list) and len(real) == len(doc), f"{where}: {real!r}"
        for i, (d, r) in enumerate(zip(doc, real, strict=True)):
            agrees(d, r, f"{where}[{i}]")
    elif isinstance(doc, float) and not doc.is_integer():
        assert isinstance(real, (int, float)) and not isinstance(real, bool), f"{where}: {real!r}"
    else:
        assert real == doc and type(real) is type(doc), f"{where} is {real!r}, the README shows {doc!r}"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """The bucket the README's OSS examples name, with the image list its ``set`` example reads."""
    srv = S3(BUCKET)
    srv.client.put_object(Bucket=BUCKET, Key="catalogue/front.jpg", Body=encode(photo("coffee")))
    srv.client.put_object(Bucket=BUCKET, Key="catalogue/back.jpg", Body=encode(crop(photo("coffee"), 0.7)))
    srv.client.put_object(Bucket=BUCKET, Key="catalogue/list.txt", Body=b"front.jpg,sku-43\nback.jpg,sku-43,1\n")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's --export-root: where the README's local init root (relative) lands."""
    return tmp_path_factory.mktemp("pai-curl-exports")


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory, s3: S3, exports: Path) -> Iterator[str]:
    """``lookalike serve --http-port 0`` with a token, as a user runs it; yields the HTTP base URL."""
    # As the README says to start it: the bucket and the endpoint its OSS init names are allowed.
    with serving(tmp_path_factory.mktemp("pai-curl"), "--export-root", str(exports), "--oss-allow",
                 f"oss://{BUCKET}/", "--oss-endpoint-allow", s3.endpoint, token=TOKEN,
                 env={"OSS_PATH_STYLE": "1"}) as served:  # fmt: skip
        yield served.http_url


def test_the_section_sets_the_address_and_covers_every_function():
    setup = re.findall(r"```sh\n(.*?)```", section(), re.S)[0]
    assert "export LOOKALIKE_HTTP=http://localhost:8080" in setup and "export LOOKALIKE_TOKEN=" in setup
    shown = {function_of(b) for b in examples()}
    assert shown == {"match", *FUNCTIONS}, f"missing: {({'match', *FUNCTIONS}) - shown}"
    for block in examples():
        assert '-H "Authorization: $LOOKALIKE_TOKEN"' in block and '"$LOOKALIKE_HTTP/' in block
        body = request_of(block)
        PaiRequest.model_validate(body)  # the types, patterns and limits of the OpenAPI document
        if "function_name" in body:  # the gateway ignores unknown parameters: a misspelt one would pass unseen
            unknown = set(body.get("function_params", {})) - set(FUNCTIONS[body["function_name"]].model_fields)
            assert not unknown, f"{body['function_name']} takes no {unknown}"
    assert LOCAL_ROOT in section() and OSS_HOST in section() and f"oss://{BUCKET}/" in section()


def test_every_readme_curl_example_in_order(http, s3, exports, tmp_path):
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("needs curl and bash")
    files = {"a.jpg": photo("chelsea"), "b.jpg": crop(photo("chelsea"), 0.85), "front.jpg": photo("astronaut"),
             "query.jpg": crop(photo("astronaut"), 0.8), "scene.jpg": photo("coffee")}  # fmt: skip
    for name, picture in files.items():
        (tmp_path / name).write_bytes(encode(picture))
    env = {**os.environ, "LOOKALIKE_HTTP": http, "LOOKALIKE_TOKEN": TOKEN}
    roots = {OSS_HOST: s3.endpoint}
    assert len(examples()) >= len(FUNCTIONS) + 1
    for block in examples():
        script = block
        for placeholder, here in roots.items():
            script = script.replace(placeholder, here)
        done = subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=180)  # fmt: skip
        assert done.returncode == 0, f"{block}\n{done.stderr}"
        answer = json.loads(done.stdout)
        assert answer["success"] is True, f"{block}\n{answer}"
        agrees(documented(block), answer)
        model = RESPONSES[function_of(block)]
        model.model_validate(answer)
        assert set(answer) <= set(model.model_fields), f"undocumented fields: {set(answer) - set(model.model_fields)}"
    assert (exports / "pai" / "shop").is_dir()  # save wrote where init said: under the export root
