"""A real gRPC (grpcio) server and client for edge's gRPC test.

serve: a server on 127.0.0.1 (h2c) with service edge.Test, methods over raw
bytes (no protobuf): Echo (unary, answers the request and sets a trailer),
Count (server streaming: the request is a number n, n messages come back) and
Fail (aborts with NOT_FOUND) and Slow (answers after 3 s). Prints {"port": P} and runs until killed.

call: calls those through TARGET (h2c, or TLS with --ca) and prints JSON of what
the client saw: messages, trailing metadata, status codes and details.
"""

import argparse
import json
import sys
import time
from concurrent import futures

import grpc


def _identity(b):
    return b


def serve():
    def echo(request, context):
        context.set_trailing_metadata((("x-trailer", "echoed"),))
        return request

    def count(request, context):
        for i in range(int(request.decode())):
            yield f"message {i}".encode()
        context.set_trailing_metadata((("x-count", request.decode()),))

    def slow(request, context):
        time.sleep(3)
        return request

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, _identity, _identity),
        "Count": grpc.unary_stream_rpc_method_handler(count, _identity, _identity),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, _identity, _identity),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, _identity, _identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("edge.Test", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    server.wait_for_termination()


def _status(e):
    return {"code": e.code().name, "details": e.details()}


def call(args):
    if args.ca:
        with open(args.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = (("grpc.ssl_target_name_override", "localhost"),)
        channel = grpc.secure_channel(args.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.target)
    out = {}
    timeout = 10
    with channel:
        if args.only:
            method = channel.unary_unary(f"/edge.Test/{args.only}", _identity, _identity)
            try:
                method(b"x", timeout=timeout)
                out[args.only] = {"code": "OK"}
            except grpc.RpcError as e:
                out[args.only] = _status(e)
            print(json.dumps(out))
            return
        echo = channel.unary_unary("/edge.Test/Echo", _identity, _identity)
        try:
            reply, c = echo.with_call(b"hello grpc", timeout=timeout)
            out["echo"] = {
                "reply": reply.decode(),
                "code": c.code().name,
                "trailers": dict(c.trailing_metadata() or ()),
            }
        except grpc.RpcError as e:
            out["echo"] = _status(e)
        count = channel.unary_stream("/edge.Test/Count", _identity, _identity)
        stream = count(b"5", timeout=timeout)
        try:
            messages = [m.decode() for m in stream]
            out["count"] = {
                "messages": messages,
                "code": stream.code().name,
                "trailers": dict(stream.trailing_metadata() or ()),
            }
        except grpc.RpcError as e:
            out["count"] = _status(e)
        fail = channel.unary_unary("/edge.Test/Fail", _identity, _identity)
        try:
            fail(b"", timeout=timeout)
            out["fail"] = {"code": "OK"}
        except grpc.RpcError as e:
            out["fail"] = _status(e)
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve")
    c = sub.add_parser("call")
    c.add_argument("--target", required=True)
    c.add_argument("--ca")
    c.add_argument("--only", help="call just this unary method")
    args = p.parse_args()
    if args.cmd == "serve":
        serve()
    else:
        call(args)


if __name__ == "__main__":
    sys.exit(main())
