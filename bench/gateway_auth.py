"""What authenticating an HTTP request costs the gateway: ``python -m bench.gateway_auth``.

The time :class:`hitlflow.gateway_auth.Authenticator` takes to decide who a request is from,
per request, for each kind of credentials: an HS256 token of the stack's key (``hitlflow
token``), an RS256 token of an identity provider (its JWKS served on a loopback port, fetched
once and cached, as in production), and a system's API key found among ``--systems`` system
users of the directory. No NATS: only the checks that run before a command is sent. Prints
microseconds per request (median of ``--rounds`` rounds of ``--requests`` requests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from hitlflow import auth
from hitlflow.gateway_auth import Authenticator, gateway_settings
from hitlflow.settings import Settings
from services.common.identity import Directory


def claims(name: str, issuer: str, audience: str) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": name, "iss": issuer, "aud": audience, "iat": now, "exp": now + 3600,
            "groups": ["finance", "audit"]}


def per_request(call: Callable[[], Any], requests: int, rounds: int) -> float:
    """Median microseconds per call over ``rounds`` rounds."""
    call()  # warm up (the JWKS is fetched here)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(requests):
            call()
        times.append((time.perf_counter() - started) / requests * 1e6)
    return statistics.median(times)


def serve_jwks(body: bytes) -> ThreadingHTTPServer:
    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the http.server interface
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--systems", type=int, default=1000,
                        help="system users with an API key in the directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        home = Path(work)
        files = auth.auth_files(home)
        auth.ensure(files)
        users = auth.load(files)
        for number in range(args.systems):  # written at once: add_user rewrites the file
            users[f"sys{number}"] = {"role": "system", "groups": [], "password": "x"}
        files.users.write_text(json.dumps({"users": users}))
        key = auth.new_api_key(files, f"sys{args.systems - 1}")
        settings = gateway_settings(Settings(home=home))
        directory = Directory(settings.identity_file)
        stack_key = Authenticator(settings, directory)
        hs256 = jwt.encode(claims("alice", "hitlflow", "hitlflow"), settings.jwt_secret(),
                           algorithm="HS256")

        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = {**RSAAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": "k1",
               "use": "sig", "alg": "RS256"}
        server = serve_jwks(json.dumps({"keys": [jwk]}).encode())
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
            provider = Authenticator(settings.model_copy(update={
                "auth_jwks_url": url, "auth_issuer": "https://idp", "auth_audience": "api"}),
                directory)
            rs256 = jwt.encode(claims("alice", "https://idp", "api"), private,
                               algorithm="RS256", headers={"kid": "k1"})
            loop = asyncio.new_event_loop()

            def check(authenticator: Authenticator, **headers: str) -> Callable[[], Any]:
                def call() -> Any:
                    return loop.run_until_complete(authenticator.caller(
                        authorization=headers.get("authorization"),
                        api_key=headers.get("api_key"), on_behalf_of=None,
                        on_behalf_groups=None))
                return call

            figures = {
                "HS256 token (stack key)": per_request(
                    check(stack_key, authorization=f"Bearer {hs256}"), args.requests,
                    args.rounds),
                "RS256 token (JWKS, cached)": per_request(
                    check(provider, authorization=f"Bearer {rs256}"), args.requests,
                    args.rounds),
                f"API key (among {args.systems} systems)": per_request(
                    check(stack_key, api_key=key), args.requests, args.rounds),
            }
            loop.close()
        finally:
            server.shutdown()
            server.server_close()
    print(f"authentication per request, median of {args.rounds} rounds of "
          f"{args.requests} requests:")
    for name, micros in figures.items():
        print(f"  {name:<32} {micros:8.1f} µs")


if __name__ == "__main__":
    main()
