"""Reading a configuration file: one strict YAML loader and one error format for every file.

The agent reads two files, its configuration (``--config``) and the web configuration
(``--web.config.file``). Both are read here, the same way: YAML through PyYAML's safe loader, a
key given twice is an error that names the key and both lines (PyYAML would keep the last one
silently, and a user listed twice under ``basic_auth_users`` would lose a password without a
word), and every problem comes back in one format::

    invalid config file /etc/sophos-central-exporter/config.yml:
      budget_share: must be greater than 0 and at most 1 (got 1.5)
      credentials.0.name: must start with a letter or digit ...

One line per problem, each naming the key as a dotted path (list items by position), so the
on-call engineer reading a crash loop knows what to fix. Rejected values are never repeated: the
value may be a secret (a client secret, a password instead of its hash).
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(Exception):
    """A configuration cannot be used; the message says which file, which key and why.

    ``problems`` holds the keys and their problems apart, for callers that want them.
    """

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)

    @classmethod
    def invalid(cls, where: str, problems: Iterable[Problem]) -> ConfigError:
        """``invalid <where>:`` and one indented ``key: problem`` line per problem."""
        found = list(problems)
        return cls("\n".join([f"invalid {where}:", *(f"  {p}" for p in found)]), found)


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class KeyProblem(ValueError):
    """Raised by a validator that checks several keys at once, to name the one at fault.

    A model validator's error belongs to the model's own key (``tls_server_config``); raising
    ``KeyProblem("cert", ...)`` there reports ``tls_server_config.cert`` instead.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def read_mapping(path: str | os.PathLike[str], what: str = "config file") -> dict[str, Any]:
    """The YAML file at ``path`` as a mapping (an empty file is an empty one).

    ``what`` names the file in messages: ``config file``, ``web config file``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise ConfigError(f"cannot read {what} {path}: {reason}") from None
    data = load_yaml(text, f"{what} {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys to values")
    return data


class _Loader(yaml.SafeLoader):
    """The safe loader, but a date or timestamp stays the text it was written as.

    YAML 1.1 turns an unquoted ``2027-03-01`` into a date object and ``2027-02-30`` into an
    exception from deep inside the constructor; as text, the key's own validator reads it and a
    mistake names the key (``credentials.0.expires_at: ...``).
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str, where: str) -> Any:
    """Parse ``text`` with the safe loader, refusing duplicate keys; ``where`` names the file."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicates(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML{_position(exc)}") from None
    except ValueError as exc:  # a value a constructor cannot build, e.g. !!timestamp 2027-02-30
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _refuse_duplicates(root: yaml.Node, where: str) -> None:
    """Walk the composed document; every key given twice in one mapping is a problem."""
    found: list[tuple[int, Problem]] = []
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    seen_nodes: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue  # an alias of a node already checked
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                line = key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode) and name != "<<":
                    identity = (key_node.tag, name)
                    if identity in first:
                        problem = f"duplicate key at line {line} (first at line {first[identity]})"
                        found.append((line, Problem(".".join((*path, name)), problem)))
                    else:
                        first[identity] = line
                stack.append((value_node, (*path, name)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(node.value))
    if found:
        found.sort(key=lambda item: item[0])
        raise ConfigError.invalid(where, [problem for _, problem in found])


def _position(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {problem}" if problem else where


# -- validation errors ---------------------------------------------------------------------------

_TYPE_MESSAGES = {
    "missing": "required key is missing",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
}


def validation_problems(exc: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """One ``Problem`` per error of ``exc`` (raised validating ``model``), key as dotted path."""
    problems: list[Problem] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(str(part) for part in error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, KeyProblem):
            loc, message = (*loc, cause.key), cause.problem
        elif error["type"] == "extra_forbidden":
            message = _unknown_key(model, loc)
        else:
            message = _TYPE_MESSAGES.get(error["type"]) or str(error["msg"])
            message = message.removeprefix("Value error, ")
        key = ".".join(loc)
        if key and message.startswith((f"{key}[", f"{key}:")):
            key = ""  # the message already names the entry, e.g. tenant_probes[2].path
        problems.append(Problem(key, message))
    return problems


def _unknown_key(model: type[BaseModel], loc: tuple[str, ...]) -> str:
    """``unknown key`` with the likely intended spelling, or the keys allowed there."""
    allowed = _keys_at(model, loc[:-1])
    if not allowed:
        return "unknown key"
    close = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.7)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (allowed: {', '.join(allowed)})"


def _keys_at(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """The field names of the model found at ``loc`` under ``model`` ([] if none is)."""
    current: Any = model
    parts = list(loc)
    while parts:
        here = _model_of(current)
        field = here.model_fields.get(parts.pop(0)) if here is not None else None
        if field is None:
            return []
        current = _unwrap(field.annotation)
        if typing.get_origin(current) in (list, tuple):
            if parts:
                parts.pop(0)  # the position in the list
            current = _unwrap(typing.get_args(current)[0])
    here = _model_of(current)
    return list(here.model_fields) if here is not None else []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` as ``X``."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None
