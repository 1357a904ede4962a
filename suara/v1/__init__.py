"""Generated gRPC/protobuf code for the suara.v1 API. Regenerate with `make protos`."""
