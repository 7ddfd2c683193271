"""How requests reach the service: the HTTP/1 front for the infer path, Starlette routes for the rest,
gRPC, the OIP v2 codecs (JSON, binary tensors, protobuf) and ``POST /v2/feedback``."""
