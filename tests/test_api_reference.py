"""docs/api.md is what the protos say now, and the renderer really shows their comments, fields and values."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2

from suara import protogen
from suara.protodoc import render

PROBE = """syntax = "proto3";

package probe.v1;

import "google/protobuf/timestamp.proto";

// Answers probes.
//
// A second paragraph with <angle brackets>.
service ProbeService {
  // Sends one probe; NOT_FOUND if it sank.
  rpc Send(SendRequest) returns (SendResponse);
}

// A probe message.
message SendRequest {
  reserved 3;
  reserved "old_depth";

  // How deep, in metres.
  int64 depth = 7;
  // What it carries | pipes included.
  repeated Item items = 2;
  // Tag -> count.
  map<string, int32> tags = 4;
  // When it was sent.
  google.protobuf.Timestamp sent_at = 5;
  // Maybe.
  optional bool maybe = 6;
}

// One thing carried.
message Item {}

// The reply.
message SendResponse {
  // Its colour.
  Color color = 1;
}

// A colour.
enum Color {
  // Not said.
  COLOR_UNSPECIFIED = 0;
  // Red, as a stop sign.
  COLOR_RED = 1;
}
"""


def _descriptors(protos: Path, tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    from grpc_tools import protoc

    out = tmp_path / "set.binpb"
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{protos}", f"-I{well_known}", f"--descriptor_set_out={out}", "--include_source_info"]
    assert protoc.main([*args, "probe.proto"]) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def test_docs_api_md_is_current(repo_root: Path, tmp_path: Path) -> None:
    protogen.generate(tmp_path)
    assert (repo_root / "docs" / "api.md").read_text() == protogen.api_reference(tmp_path), "run `make protos`"


def test_the_reference_shows_every_comment_field_and_value(tmp_path: Path) -> None:
    (tmp_path / "probe.proto").write_text(PROBE)
    text = render(_descriptors(tmp_path, tmp_path), "Probe API", "An intro.")
    lines = text.splitlines()
    assert lines[:3] == ["# Probe API", "", "An intro."]
    for expected in [
        "### ProbeService",
        "Service `probe.v1.ProbeService`.",
        "Answers probes.",
        "A second paragraph with &lt;angle brackets>.",
        "| [Send](#probeservicesend) | [SendRequest](#sendrequest) | [SendResponse](#sendresponse) |",
        "#### ProbeService.Send",
        "`rpc Send(SendRequest) returns (SendResponse)`",
        "Sends one probe; NOT_FOUND if it sank.",
        "### SendRequest",
        "A probe message.",
        "| `depth` | 7 | `int64` | How deep, in metres. |",
        "| `items` | 2 | repeated [Item](#item) | What it carries \\| pipes included. |",
        "| `tags` | 4 | `map<string, int32>` | Tag -> count. |",
        "| `sent_at` | 5 | `google.protobuf.Timestamp` | When it was sent. |",
        "| `maybe` | 6 | `optional bool` | Maybe. |",
        'Reserved (never reuse): 3, "old_depth".',
        "### Item",
        "No fields.",
        "| `color` | 1 | [Color](#color) | Its colour. |",
        "### Color",
        "| `COLOR_RED` | 1 | Red, as a stop sign. |",
    ]:
        assert expected in lines, expected
    assert "TagsEntry" not in text  # a map's entry type is shown as map<K, V>, not as a message
