"""The OpenAPI document of the PAI gateway says, per function, what the gateway really reads.

The gateway parses bodies itself (so bad input gets the PAI envelope), and the pydantic models in
``pai_schema.py`` only document them; these tests keep the two from drifting apart. They read
``http_gateway.py``'s source: every ``self.param(p, NAME, KIND, required=...)``, ``p.get(NAME)``
and ``X.get(KEY)`` of a dict parameter X in ``fn_<function>`` (and the ``self._helper(p)`` it
calls) must be declared by that function's schema with the same type, required-ness and default,
and every declared parameter must be read.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any

import pytest
from lookalike.server.transport import http_gateway, pai_schema
from lookalike.server.transport.http_gateway import PaiGateway
from lookalike.server.transport.http_server import create_app

# Declared for PAI scripts, read by nobody: the schema says so in its description.
IGNORED = {("init", "oss_io_config.buckets")}
JSON_TYPES = {"str": "string", "int": "integer", "dict": "object", "bool": "boolean", "float": "number",
              "list": "array"}  # fmt: skip


@dataclass
class Read:
    """One parameter as the gateway reads it."""

    kinds: frozenset[str] | None  # JSON types, or None where the gateway does not check the type itself
    required: bool
    default: Any = None


def _kinds(node: ast.expr) -> frozenset[str]:
    names = [e.id for e in node.elts] if isinstance(node, ast.Tuple) else [node.id]  # type: ignore[attr-defined]
    return frozenset(JSON_TYPES[n] for n in names)


def _param_call(node: ast.AST) -> ast.Call | None:
    """``self.param(p, ...)``"""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "param":
        return node
    return None


def gateway_reads() -> dict[str, dict[str, Read]]:
    """function name -> dotted parameter name -> how ``fn_<name>`` reads it, from the gateway's source."""
    tree = ast.parse(inspect.getsource(http_gateway))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PaiGateway")
    methods = {m.name: m for m in cls.body if isinstance(m, ast.FunctionDef)}

    def reads_of(method: ast.FunctionDef) -> dict[str, Read]:
        found: dict[str, Read] = {}
        fors = [n for n in ast.walk(method) if isinstance(n, ast.For) and isinstance(n.target, ast.Name)]
        loops = {n.target.id: [e.value for e in n.iter.elts] for n in fors if isinstance(n.iter, ast.Tuple)}  # type: ignore[attr-defined]
        nested: dict[str, str] = {}  # local variable -> the dict parameter it holds
        defaults: dict[int, Any] = {}  # id(param call) -> the constant after "or"
        for node in ast.walk(method):
            if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and (call := _param_call(node.values[0])):
                if isinstance(node.values[1], ast.Constant):
                    defaults[id(call)] = node.values[1].value
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                value = node.value.values[0] if isinstance(node.value, ast.BoolOp) else node.value
                if (call := _param_call(value)) and isinstance(call.args[1], ast.Constant):
                    nested[node.targets[0].id] = call.args[1].value
        for node in ast.walk(method):
            if call := _param_call(node):
                arg = call.args[1]
                names = loops[arg.id] if isinstance(arg, ast.Name) else [arg.value]  # type: ignore[attr-defined]
                required = next((k.value.value for k in call.keywords if k.arg == "required"), True)  # type: ignore[attr-defined]
                for name in names:
                    found[name] = Read(_kinds(call.args[2]), required, defaults.get(id(call)))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                owner, key = node.func.value, node.args[0]
                if isinstance(owner, ast.Name) and isinstance(key, ast.Constant):
                    if owner.id == "p":
                        found.setdefault(key.value, Read(None, True))  # an image: image_bytes() requires it
                    elif owner.id in nested:
                        found.setdefault(f"{nested[owner.id]}.{key.value}", Read(None, False))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods:
                helper = methods[node.func.attr]
                if node.func.attr.startswith("_") and [a.arg for a in helper.args.args][1:2] == ["p"]:
                    found.update(reads_of(helper))
        return found

    return {name[3:]: reads_of(m) for name, m in methods.items() if name.startswith("fn_")}


def schema_params(name: str) -> dict[str, dict[str, Any]]:
    """dotted parameter name -> {"kinds", "required", "default"}, from the function's JSON schema."""
    schema = pai_schema.FUNCTIONS[name].model_json_schema()
    defs = schema.get("$defs", {})

    def flatten(obj: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
        out = {}
        for field, spec in obj.get("properties", {}).items():
            options = spec.get("anyOf", [spec])
            kinds = set()
            for option in options:
                if "$ref" in option:
                    target = defs[option["$ref"].rsplit("/", 1)[1]]
                    out.update(flatten(target, f"{prefix}{field}."))
                    kinds.add("object")
                elif option.get("type") != "null":
                    kinds.add(option["type"])
            out[prefix + field] = {"kinds": frozenset(kinds), "required": field in obj.get("required", []),
                                   "default": spec.get("default")}  # fmt: skip
        return out

    return flatten(schema, "")


def test_the_gateway_dispatches_exactly_the_functions_of_the_schema_table():
    dispatched = {name[3:] for name in dir(PaiGateway) if name.startswith("fn_")}
    assert dispatched == set(pai_schema.FUNCTIONS) == set(pai_schema.REQUESTS)
    assert http_gateway.FUNCTIONS is pai_schema.FUNCTIONS  # one table: the gateway's names are the schema's


@pytest.mark.parametrize("function", list(pai_schema.FUNCTIONS))
def test_every_parameter_the_gateway_reads_is_declared_alike(function):
    reads, declared = gateway_reads()[function], schema_params(function)
    assert set(reads) <= set(declared), f"{function}: read but not in the schema: {set(reads) - set(declared)}"
    unread = {p for p in declared if p not in reads and (function, p) not in IGNORED}
    unread -= {p.rsplit(".", 1)[0] for p in reads if "." in p}  # a dict whose keys are read is read
    assert not unread, f"{function}: in the schema but never read: {unread}"
    for name, read in reads.items():
        spec = declared[name]
        assert spec["required"] is read.required, f"{function}.{name}: required {read.required} in the gateway"
        if read.kinds is not None:
            assert spec["kinds"] == read.kinds, f"{function}.{name}: {set(read.kinds)} in the gateway"
        if read.default is not None:
            assert spec["default"] == read.default, f"{function}.{name}: default {read.default!r} in the gateway"


def test_match_reads_what_its_schema_declares():
    source = inspect.getsource(PaiGateway.match)
    reads = {n.args[0].value for n in ast.walk(ast.parse(textwrap.dedent(source))) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "get"}  # fmt: skip
    schema = pai_schema.MatchRequest.model_json_schema()
    assert reads == set(schema["properties"]) == {"imagea", "imageb", "crop_a", "crop_b"}
    assert set(schema["required"]) == {"imagea", "imageb"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document ``GET /openapi.json`` serves (the app's own ``openapi()``, no server needed)."""
    return create_app(PaiGateway.__new__(PaiGateway)).openapi()


def test_the_document_is_valid_openapi(document):
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)
    for path in ("/", "/api/predict/{service_name}"):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/PaiRequest"}
        answers = document["paths"][path]["post"]["responses"]
        assert answers["4XX"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Envelope"}


def test_requests_are_a_union_keyed_by_function_name(document):
    schemas = document["components"]["schemas"]
    match, retrieval = schemas["PaiRequest"]["anyOf"]
    assert match == {"$ref": "#/components/schemas/MatchRequest"}
    assert retrieval["discriminator"]["propertyName"] == "function_name"
    mapping = retrieval["discriminator"]["mapping"]
    assert set(mapping) == set(pai_schema.FUNCTIONS)
    for function, ref in mapping.items():
        request = schemas[ref.rsplit("/", 1)[1]]
        assert request["properties"]["function_name"]["const"] == function
        params = schemas[request["properties"]["function_params"]["$ref"].rsplit("/", 1)[1]]
        assert params["description"] and all(p.get("description") or "$ref" in p or "anyOf" in p
                                             for p in params.get("properties", {}).values())  # fmt: skip
        assert ("function_params" in request.get("required", [])) is bool(params.get("required"))


def test_the_schema_states_the_limits_and_defaults(document):
    schemas = document["components"]["schemas"]
    name = schemas["AddParams"]["properties"]["database_name"]
    assert name["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$" and name["maxLength"] == 63
    top_k = schemas["DbSearchParams"]["properties"]["search_topk"]
    assert top_k["default"] == 10 and top_k["anyOf"][0]["minimum"] == 1 and top_k["anyOf"][0]["maximum"] == 1000
    intra = schemas["DbSetParams"]["properties"]["intra_id"]["anyOf"][0]
    assert (intra["minimum"], intra["maximum"]) == (0, 2**53 - 1)
    assert schemas["InitParams"]["properties"]["backend"]["default"] == "local"
    assert set(schemas["DbSetParams"]["required"]) == {"database_name", "group_id", "image"}


def test_examples_validate_and_mistakes_do_not(document):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"$ref": "#/components/schemas/PaiRequest", "components": document["components"]}
    good = [
        {"imagea": "AAAA", "imageb": "AAAA"},
        {"function_name": "get"},
        {"function_name": "db_search", "function_params": {"database_name": "shop", "image": "AAAA", "search_topk": 5}},
        {"function_name": "db_search", "function_params": {"database_name": "shop", "image": "AAAA",
                                                           "crop": [0.25, 0.25, 0.5, 0.5]}},
        {"imagea": "AAAA", "imageb": "AAAA", "crop_a": [0, 0, 1, 0.5]},
        {"function_name": "db_set", "function_params": {"database_name": "shop", "group_id": 42, "image": "AAAA"}},
        {"function_name": "init", "function_params": {"backend": "oss", "root_path": "oss://b/p/",
                                                      "oss_io_config": {"ak_id": "a", "ak_secret": "s"}}},
    ]  # fmt: skip
    bad = [
        {"function_name": "nope", "function_params": {}},
        {"function_name": "add", "function_params": {}},
        {"function_name": "db_search", "function_params": {"database_name": "shop", "image": "AAAA", "search_topk": 0}},
        {"function_name": "db_search", "function_params": {"database_name": "shop", "image": "AAAA", "crop": [0, 1]}},
        {"imagea": "AAAA", "imageb": "AAAA", "crop_b": [0, 0, 1.5, 1]},
        {"function_name": "db_set", "function_params": {"database_name": "-x", "group_id": "g", "image": "AAAA"}},
        {"function_name": "db_get", "function_params": {"database_name": "shop", "group_id": "g", "intra_id": -1}},
    ]  # fmt: skip
    for body in good:
        jsonschema.validate(body, schema)
    for body in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, schema)
