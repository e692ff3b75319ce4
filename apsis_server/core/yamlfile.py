"""Reading YAML text the way job, calendar and config files are read.

PyYAML's YAML 1.1 with these changes:

- no base-60 numbers: an unquoted `12:00` is the string (noon), not 720;
- only `true`/`false` are booleans, and mapping keys YAML 1.1 reads as booleans
  (`on`, `yes`, ...) stay strings, so a retry action's `on:` key is the key `on`;
  fields that take a boolean accept `yes`/`no`/`on`/`off` themselves (`fields.boolean`);
- a date or time that does not exist (`2024-13-01`, `2027-02-30T00:00:00Z`) stays
  the text it was, so the field that reads it reports it with its key path.

No value crashes a load: one that cannot be built (`!!int abc`, or a value that
contains an alias to itself, `&a [*a]`) is `Invalid` with its line and column, an
error of that one file.

Two limits keep one file from costing the server much memory or time:

- a text longer than `MAX_FILE_SIZE` (1 MiB) is refused before it is parsed;
- aliases may add at most `MAX_ALIAS_VALUES` (10,000) values to a document: each
  alias stands for a copy of its anchor's value, so a few hundred bytes of nested
  aliases (the "billion laughs") would otherwise be a value of billions of items
  once it is copied, checked or sent as JSON. A job file needs a few dozen.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

from apsis_server.core.fields import FieldError, Invalid

# The longest text read (in characters; a file's limit is as many bytes).
MAX_FILE_SIZE = 1 << 20
# Why a longer file is refused.
TOO_LARGE = f"the file is larger than {MAX_FILE_SIZE >> 20} MiB, the limit for a YAML file"
# The most values aliases may add to a document.
MAX_ALIAS_VALUES = 10_000

# The C parser where PyYAML has it: ten thousand job files load several times faster.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _BadValue(yaml.constructor.ConstructorError):
    """A value that parses but cannot be built (as opposed to a syntax error)."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_aliases(root: yaml.Node) -> None:
    """Raise for an alias inside its own anchor's node (the value would contain itself,
    and checking or hashing the job would recurse forever), or for aliases that add
    more than `MAX_ALIAS_VALUES` values to the document once expanded.

    One walk over the node graph, each node once: a node met again is an alias, and
    its size with every alias in it expanded is known from when it was first done.
    """
    sizes: dict[int, int] = {}  # id of each node done -> its values, aliases expanded
    open_nodes = {id(root)}
    added = 0
    # (node, its children not yet met, its size so far)
    stack: list[tuple[yaml.Node, Iterator[yaml.Node], list[int]]] = [
        (root, iter(_children(root)), [1])
    ]
    while stack:
        node, children, size = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            open_nodes.discard(id(node))
            sizes[id(node)] = size[0]
            if stack:
                stack[-1][2][0] += size[0]
        elif id(child) in open_nodes:
            raise _BadValue(None, None, "this value contains an alias to itself", child.start_mark)
        elif id(child) in sizes:
            size[0] += sizes[id(child)]
            added += sizes[id(child)]
            if added > MAX_ALIAS_VALUES:
                # The alias's own place is not kept: the mark of the value that holds it.
                message = f"aliases expand to more than {MAX_ALIAS_VALUES:,} values"
                raise _BadValue(None, None, message, node.start_mark)
        else:
            open_nodes.add(id(child))
            stack.append((child, iter(_children(child)), [1]))


class _Loader(_BaseLoader):  # type: ignore[misc]
    """PyYAML's safe loader with the changes of the module docstring."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # Only an anchor (`&a`) makes an alias possible: most files need no check.
        self._anchors = "&" in stream

    def construct_document(self, node: yaml.Node) -> Any:
        if self._anchors:
            _check_aliases(node)
        return super().construct_document(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            # PyYAML's constructors raise ValueError, KeyError, TypeError, ... for a
            # value its tag cannot hold (`!!int abc`): say where, as for a syntax error.
            tag = node.tag.rpartition(":")[2]
            value = repr(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
            raise _BadValue(
                None, None, f"cannot read {value} as {tag} ({exc})", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:bool":
                key_node.tag = "tag:yaml.org,2002:str"
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        """A date or time, or the text itself when no such date or time exists."""
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)
_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text the way job files are read; `Invalid` when it cannot be read."""
    if len(text) > MAX_FILE_SIZE:
        raise Invalid([FieldError("", TOO_LARGE)])
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        kind = "YAML error" if isinstance(exc, _BadValue) else "YAML syntax error"
        raise Invalid([FieldError("", f"{kind}: {where}{problem}")]) from None
    except Exception as exc:
        # What `construct_object` cannot place: a collection its tag cannot hold
        # (`!!set [1]`), built after the rest of the document.
        raise Invalid([FieldError("", f"YAML error: {type(exc).__name__}: {exc}")]) from None
