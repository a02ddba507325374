"""Reading ``params.yaml``: the file and YAML checks (size, duplicate keys, alias bombs), then
validation into a :class:`StudyConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from pipeline.study.params_errors import describe_error, loc_text, one_line
from pipeline.study.schema import (
    Located,
)
from pipeline.study.study_config import StudyConfig
from pipeline.util.errors import ConfigError

# --------------------------------------------------------------------------- loading


MAX_PARAMS_BYTES = 1 << 20  # a params file is a page of YAML, not data
MAX_PARAMS_VALUES = 100_000  # after expanding YAML aliases ("billion laughs" guard)


def load_params(path: str | Path = "params.yaml") -> StudyConfig:
    """Read and validate ``params.yaml``; raise ConfigError with one clear line otherwise."""
    path = Path(path)
    label = str(path)
    if path.is_dir():
        raise ConfigError(f"{label}: is a folder (expected a YAML params file)")
    if not path.is_file():
        raise ConfigError(f"{label}: file not found (expected a YAML params file)")
    try:
        size = path.stat().st_size
        if size > MAX_PARAMS_BYTES:
            raise ConfigError(
                f"{label}: {size} bytes is too large for a params file "
                f"(limit {MAX_PARAMS_BYTES}; expected a YAML mapping of sections)"
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not a UTF-8 text file") from None
    except OSError as err:
        raise ConfigError(f"{label}: cannot be read ({err.strerror or err})") from None
    raw = parse_yaml(text, label)
    if raw is None:
        raise ConfigError(f"{label}: the file is empty (expected a mapping of sections)")
    return parse_params(raw, label=label).with_root(path.resolve().parent)


def parse_params(raw: Any, label: str = "params.yaml") -> StudyConfig:
    """Validate an already-parsed mapping (the YAML file's content)."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{label}: expected a mapping of sections at the top level, got {type(raw).__name__}"
        )
    if count_values(raw) > MAX_PARAMS_VALUES:
        raise ConfigError(
            f"{label}: more than {MAX_PARAMS_VALUES} values once YAML aliases are expanded "
            "(expected a small mapping of sections)"
        )
    from pipeline.study.limits import check_maxima

    try:
        cfg = StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(one_line(f"{label}: {describe_error(err, raw)}")) from None
    except Located as err:  # pragma: no cover - pydantic wraps these; kept for safety
        raise ConfigError(one_line(f"{label}: {loc_text(err.loc)}: {err.message}")) from None
    check_maxima(cfg, label)  # sizes that allocate: one table of upper bounds
    return cfg


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (PyYAML silently keeps the last one, so a
    second ``sweep:`` section would quietly replace the first)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, label: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "could not be parsed"
        raise ConfigError(one_line(f"{label}: invalid YAML{where}: {problem}")) from None
    except RecursionError:
        raise ConfigError(f"{label}: invalid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:  # e.g. a 5000-digit integer
        raise ConfigError(one_line(f"{label}: invalid YAML: {err}")) from None


def count_values(tree: Any, limit: int = MAX_PARAMS_VALUES) -> int:
    """Values in a parsed YAML tree, aliases counted at every use; stops past ``limit``."""
    count, stack = 0, [tree]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)
    return count
