"""A KServe InferenceService checked offline against the pinned kserve wheel's OpenAPI-generated models.

The wheel's `kserve/models/*.py` are generated from KServe's OpenAPI spec of its release: per type,
`openapi_types` (attribute -> type string), `attribute_map` (attribute -> JSON key), and setters that raise on
None under client-side validation for a required field. They are read with `ast`, never imported (the kserve
package's `__init__` pulls in its server stack). The Kubernetes types they embed (`V1Container`,
`V1ResourceRequirements`, `V1ObjectMeta`...) are not in the wheel: those subtrees are validated with jsonschema
against the strict OpenAPI definitions kubernetes-validate ships for a pinned Kubernetes version.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.resources
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

INFERENCE_SERVICE = "V1beta1InferenceService"
# The generator's own scalar types; a JSON bool is no int, though Python's bool is one.
SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
}
LIST = re.compile(r"list\[(.+)\]")
DICT = re.compile(r"dict\(str, (.+)\)")
# Where a client type name matches definitions in several API groups, the Kubernetes client's own choice.
PREFERRED_GROUPS = ("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta.")


class SchemaError(ValueError):
    """A document that does not match the schema; one line per problem, each naming its path."""


@dataclass(frozen=True)
class Model:
    """One generated type: its JSON keys with their type strings, and the keys it requires."""

    fields: Mapping[str, str]
    required: frozenset[str]


def kserve_version() -> str:
    return importlib.metadata.version("kserve")


def _is_required_check(test: ast.expr) -> str | None:
    """`self.local_vars_configuration.client_side_validation and <name> is None`: the name, else None."""
    if not (isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) and len(test.values) == 2):
        return None
    flag, check = test.values
    if ast.unparse(flag) != "self.local_vars_configuration.client_side_validation":
        return None
    if (
        isinstance(check, ast.Compare)
        and isinstance(check.left, ast.Name)
        and [type(op) for op in check.ops] == [ast.Is]
        and isinstance(check.comparators[0], ast.Constant)
        and check.comparators[0].value is None
    ):
        return check.left.id
    return None


def _model(cls: ast.ClassDef) -> Model | None:
    tables = {
        target.id: ast.literal_eval(node.value)
        for node in cls.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map")
    }
    if set(tables) != {"openapi_types", "attribute_map"}:
        return None
    keys = tables["attribute_map"]
    required = {name for node in ast.walk(cls) if isinstance(node, ast.If) and (name := _is_required_check(node.test))}
    return Model(
        fields={keys[attr]: kind for attr, kind in tables["openapi_types"].items()},
        required=frozenset(keys[attr] for attr in required),
    )


@cache
def kserve_models() -> dict[str, Model]:
    """Every generated type of the installed kserve wheel by class name, read from its sources."""
    folder = Path(str(importlib.metadata.distribution("kserve").locate_file("kserve/models")))
    models = {}
    for source in sorted(folder.glob("*.py")):
        for node in ast.parse(source.read_text(), filename=str(source)).body:
            if isinstance(node, ast.ClassDef) and (model := _model(node)):
                models[node.name] = model
    if INFERENCE_SERVICE not in models:
        raise FileNotFoundError(f"no {INFERENCE_SERVICE} among the kserve models in {folder}")
    return models


def _capital(part: str) -> str:
    return part[:1].upper() + part[1:]


@cache
def kubernetes_definitions(version: str) -> tuple[dict[str, Any], dict[str, str]]:
    """kubernetes-validate's strict definitions for `version`, and the client type names that map to them.

    The Kubernetes client names a type by its version and kind (`V1Container`: io.k8s.api.core.v1.Container,
    `ResourceQuantity`: io.k8s.apimachinery.pkg.api.resource.Quantity) or, outside core, by its whole path
    (`K8sIoApiAppsV1DeploymentStrategy`).
    """
    path = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    document = json.loads((path / "_definitions.json").read_text())
    candidates: dict[str, list[str]] = {}
    for key in document["$defs"]:
        parts = key.split(".")
        candidates.setdefault(_capital(parts[-2]) + parts[-1], []).append(key)
        if key.startswith("io.k8s."):
            candidates.setdefault("K8sIo" + "".join(map(_capital, parts[2:])), []).append(key)
    names = {}
    for name, keys in candidates.items():
        if len(keys) > 1:
            keys = [k for k in keys if k.startswith(PREFERRED_GROUPS)]
        if len(keys) == 1:
            names[name] = keys[0]
    return document, names


class InferenceServiceSchema:
    """Checks documents against kserve's generated models, Kubernetes subtrees against `kubernetes_version`'s."""

    def __init__(self, kubernetes_version: str) -> None:
        self.kubernetes_version = kubernetes_version
        self.models = kserve_models()
        definitions, self.kubernetes = kubernetes_definitions(kubernetes_version)
        self.definitions_id = definitions["$id"]
        self.registry = Resource.from_contents(definitions) @ Registry()

    def validate(self, document: Any) -> None:
        """Raises SchemaError listing every problem of an InferenceService document."""
        if problems := list(self.problems(document)):
            raise SchemaError("\n".join(problems))

    def problems(self, document: Any) -> Iterator[str]:
        """Each problem as `<path>: <what is wrong>`, the path as in `spec.predictor.model.ports[0]`."""
        for problem in self._check(document, INFERENCE_SERVICE, ""):
            yield problem.removeprefix(".")

    def _check(self, value: Any, kind: str, path: str) -> Iterator[str]:
        if kind == "object":
            return
        if LIST.fullmatch(kind) or DICT.fullmatch(kind):
            yield from self._container(value, kind, path)
        elif kind in SCALARS:
            if not isinstance(value, SCALARS[kind]) or (kind != "bool" and isinstance(value, bool)):
                yield f"{path}: {type(value).__name__} {value!r}, expected {kind}"
        elif (model := self.models.get(kind)) and model.fields:
            yield from self._model(value, kind, model, path)
        elif kind in self.kubernetes:
            # Also a kserve model without fields: the generator's placeholder for a Kubernetes type (V1Time).
            yield from self._kubernetes(value, self.kubernetes[kind], path)
        else:
            yield (
                f"{path}: no schema for type {kind} (neither a kserve {kserve_version()} model nor a Kubernetes "
                f"{self.kubernetes_version} definition)"
            )

    def _container(self, value: Any, kind: str, path: str) -> Iterator[str]:
        if item := LIST.fullmatch(kind):
            if not isinstance(value, list):
                yield f"{path}: {type(value).__name__}, expected {kind}"
                return
            for index, each in enumerate(value):
                yield from self._check(each, item.group(1), f"{path}[{index}]")
            return
        entry = DICT.fullmatch(kind)
        if not isinstance(value, dict):
            yield f"{path}: {type(value).__name__}, expected {kind}"
            return
        for key, each in value.items():
            yield from self._check(each, entry.group(1), f"{path}.{key}")

    def _model(self, value: Any, kind: str, model: Model, path: str) -> Iterator[str]:
        if not isinstance(value, dict):
            yield f"{path}: {type(value).__name__}, expected an object ({kind})"
            return
        for key in sorted(model.required):
            if value.get(key) is None:
                yield f"{path}.{key}: required by {kind}, missing"
        for key, each in value.items():
            if key not in model.fields:
                yield f"{path}.{key}: unknown field of {kind}"
            elif each is not None:  # a null field is an absent one (the API server prunes it)
                yield from self._check(each, model.fields[key], f"{path}.{key}")

    def _kubernetes(self, value: Any, key: str, path: str) -> Iterator[str]:
        schema = {"$ref": f"{self.definitions_id}#/$defs/{key}"}
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
        for error in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path))):
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            yield f"{path}{where}: {error.message} (Kubernetes {self.kubernetes_version} {key})"
