"""The API reference (docs/api.md), rendered from the protos' own comments.

`suara.protogen` compiles protos/ with source info into a FileDescriptorSet and hands it here:
every service and RPC, message (its fields with number, type and comment) and enum (its values)
comes out in Markdown, in the order the .proto files declare them. The comments are the only
source, so the reference cannot say what the protos do not.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from google.protobuf import descriptor_pb2

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    _F.TYPE_DOUBLE: "double",
    _F.TYPE_FLOAT: "float",
    _F.TYPE_INT64: "int64",
    _F.TYPE_UINT64: "uint64",
    _F.TYPE_INT32: "int32",
    _F.TYPE_FIXED64: "fixed64",
    _F.TYPE_FIXED32: "fixed32",
    _F.TYPE_BOOL: "bool",
    _F.TYPE_STRING: "string",
    _F.TYPE_BYTES: "bytes",
    _F.TYPE_UINT32: "uint32",
    _F.TYPE_SFIXED32: "sfixed32",
    _F.TYPE_SFIXED64: "sfixed64",
    _F.TYPE_SINT32: "sint32",
    _F.TYPE_SINT64: "sint64",
}
# Field numbers of the descriptor protos, as SourceCodeInfo paths use them.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE, _SERVICE_METHOD = 2, 2

Comments = dict[tuple[int, ...], str]


def render(files: descriptor_pb2.FileDescriptorSet, title: str, intro: str) -> str:
    """The Markdown reference of every file in `files`, in their order."""
    out = [f"# {title}", "", intro, ""]
    for file in files.file:
        out.append(f"- [{file.name}](#{_anchor(file.name)})")
    for file in files.file:
        out += ["", f"## {file.name}", ""]
        out += _file(file)
    return "\n".join(out).rstrip() + "\n"


def _comments(file: descriptor_pb2.FileDescriptorProto) -> Comments:
    found: Comments = {}
    for location in file.source_code_info.location:
        text = location.leading_comments or location.trailing_comments
        if text.strip():
            found[tuple(location.path)] = _dedent(text)
    return found


def _dedent(text: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def _file(file: descriptor_pb2.FileDescriptorProto) -> Iterator[str]:
    comments = _comments(file)
    package = file.package
    for i, service in enumerate(file.service):
        yield from _service(service, package, comments, (_FILE_SERVICE, i))
    for i, message in enumerate(file.message_type):
        yield from _message(message, message.name, package, comments, (_FILE_MESSAGE, i))
    for i, enum in enumerate(file.enum_type):
        yield from _enum(enum, enum.name, comments, (_FILE_ENUM, i))


def _service(
    service: descriptor_pb2.ServiceDescriptorProto, package: str, comments: Comments, path: tuple[int, ...]
) -> Iterator[str]:
    yield f"### {service.name}"
    yield ""
    yield f"Service `{package}.{service.name}`."
    yield ""
    yield from _paragraphs(comments.get(path, ""))
    yield "| RPC | Request | Response |"
    yield "|---|---|---|"
    for method in service.method:
        request, response = _type_link(method.input_type, package), _type_link(method.output_type, package)
        yield f"| [{method.name}](#{_anchor(service.name + '.' + method.name)}) | {request} | {response} |"
    yield ""
    for j, method in enumerate(service.method):
        yield f"#### {service.name}.{method.name}"
        yield ""
        yield f"`rpc {method.name}({_short(method.input_type)}) returns ({_short(method.output_type)})`"
        yield ""
        yield from _paragraphs(comments.get((*path, _SERVICE_METHOD, j), ""))


def _message(
    message: descriptor_pb2.DescriptorProto, name: str, package: str, comments: Comments, path: tuple[int, ...]
) -> Iterator[str]:
    if message.options.map_entry:
        return  # shown as map<K, V> on the field that holds it
    yield f"### {name}"
    yield ""
    yield from _paragraphs(comments.get(path, ""))
    if message.field:
        maps = {nested.name: nested for nested in message.nested_type if nested.options.map_entry}
        yield "| Field | Number | Type | Description |"
        yield "|---|---|---|---|"
        for j, field in enumerate(message.field):
            kind = _field_type(field, package, maps)
            kind = kind if "](" in kind else f"`{kind}`"
            about = _cell(comments.get((*path, _MESSAGE_FIELD, j), ""))
            yield f"| `{field.name}` | {field.number} | {kind} | {about} |"
        yield ""
    else:
        yield "No fields."
        yield ""
    reserved = [_range(r.start, r.end) for r in message.reserved_range] + [f'"{n}"' for n in message.reserved_name]
    if reserved:
        yield f"Reserved (never reuse): {', '.join(reserved)}."
        yield ""
    for k, nested in enumerate(message.nested_type):
        yield from _message(nested, f"{name}.{nested.name}", package, comments, (*path, _MESSAGE_NESTED, k))
    for k, enum in enumerate(message.enum_type):
        yield from _enum(enum, f"{name}.{enum.name}", comments, (*path, _MESSAGE_ENUM, k))


def _enum(
    enum: descriptor_pb2.EnumDescriptorProto, name: str, comments: Comments, path: tuple[int, ...]
) -> Iterator[str]:
    yield f"### {name}"
    yield ""
    yield from _paragraphs(comments.get(path, ""))
    yield "| Value | Number | Description |"
    yield "|---|---|---|"
    for j, value in enumerate(enum.value):
        yield f"| `{value.name}` | {value.number} | {_cell(comments.get((*path, _ENUM_VALUE, j), ''))} |"
    yield ""


def _field_type(
    field: descriptor_pb2.FieldDescriptorProto, package: str, maps: dict[str, descriptor_pb2.DescriptorProto]
) -> str:
    entry = maps.get(_short(field.type_name)) if field.type == _F.TYPE_MESSAGE else None
    if entry is not None:
        key, value = entry.field
        return f"map<{_field_type(key, package, {})}, {_field_type(value, package, {})}>"
    kind = _SCALARS.get(field.type) or _type_link(field.type_name, package)
    if field.label == _F.LABEL_REPEATED:
        return f"repeated {kind}"
    if field.proto3_optional:
        return f"optional {kind}"
    return kind


def _type_link(type_name: str, package: str) -> str:
    """A link to a type of this package; other packages' types by their full name."""
    full = type_name.lstrip(".")
    if full.startswith(package + "."):
        local = full[len(package) + 1 :]
        return f"[{local}](#{_anchor(local)})"
    return full


def _short(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces as '-'."""
    kept = "".join(c for c in heading.lower() if c.isalnum() or c in "-_ ")
    return kept.replace(" ", "-")


def _range(start: int, end: int) -> str:
    return str(start) if end == start + 1 else f"{start} to {end - 1}"  # end is exclusive


def _paragraphs(text: str) -> Sequence[str]:
    return [_escape(text), ""] if text else []


def _cell(text: str) -> str:
    """A comment inside a table cell: one line, paragraphs kept apart, pipes escaped."""
    paragraphs = [" ".join(p.split()) for p in _escape(text).split("\n\n")]
    return "<br><br>".join(p for p in paragraphs if p).replace("|", "\\|")


def _escape(text: str) -> str:
    """`<` outside code spans as an entity: "<credential id>" is text, not an HTML tag to drop."""
    parts = text.split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;") for i, part in enumerate(parts))
