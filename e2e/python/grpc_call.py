"""Calls a gRPC method of a Quartet service knowing only its name, as grpcurl does: the
request and reply types come from the server's reflection service.

    python grpc_call.py HOST:PORT package.Service/Method 'JSON request' [TOKEN]

prints each reply as one line of JSON (one line for a unary method, one per item for a
server stream); a failed call prints `CODE: details` to stderr and exits 1.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(target, path, request_json, token=None):
    service_name, method_name = path.split("/")
    channel = grpc.insecure_channel(target)
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
    request_type = GetMessageClass(method.input_type)
    reply_type = GetMessageClass(method.output_type)
    request = json_format.Parse(request_json, request_type())
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    call = kind(
        f"/{service_name}/{method_name}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=reply_type.FromString,
    )
    metadata = [("authorization", f"Bearer {token}")] if token else []
    try:
        replies = call(request, metadata=metadata, timeout=30)
        for reply in replies if method.server_streaming else [replies]:
            print(json.dumps(json_format.MessageToDict(reply)), flush=True)
    except grpc.RpcError as e:
        sys.exit(f"{e.code().name}: {e.details()}")


if __name__ == "__main__":
    main(*sys.argv[1:])
