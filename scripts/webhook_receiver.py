"""A webhook receiver for CI that trusts nothing of offboard's: every request it gets is
verified with the `standardwebhooks` package from PyPI (the Standard Webhooks reference
library), and tampered copies of it (body, id, timestamp or signature changed) must be
rejected by the same library.

  python webhook_receiver.py serve PORT SECRETS_FILE LOG_FILE
      answers 204 to a request that verifies under any secret listed in SECRETS_FILE
      (one per line, read on every request), 400 otherwise; logs each request as a JSON line.
  python webhook_receiver.py check LOG_FILE SECRETS_FILE MIN_COUNT
      re-verifies every logged request, checks the tampered copies are refused and that
      requests signed twice (a rotation) verify under each secret alone; exits 1 on a failure.
"""

import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def secrets(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def verifies(secret, body, headers):
    try:
        Webhook(secret).verify(body, headers)
        return True
    except WebhookVerificationError:
        return False


def serve(port, secrets_file, log_file):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            ok = any(verifies(s, body, headers) for s in secrets(secrets_file))
            with open(log_file, "a") as log:
                log.write(json.dumps({
                    "headers": {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature") if k in headers},
                    "body": base64.b64encode(body).decode(),
                    "verified": ok,
                }) + "\n")
            self.send_response(204 if ok else 400)
            self.end_headers()

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()


def check(log_file, secrets_file, min_count):
    keys = secrets(secrets_file)
    with open(log_file) as f:
        logged = [json.loads(line) for line in f if line.strip()]
    failures = []
    types = set()
    twice = 0
    for n, entry in enumerate(logged):
        body = base64.b64decode(entry["body"])
        headers = entry["headers"]
        types.add(json.loads(body)["type"])
        valid = [s for s in keys if verifies(s, body, headers)]
        if not entry["verified"] or not valid:
            failures.append(f"request {n} ({headers.get('webhook-id')}) did not verify")
            continue
        signatures = headers["webhook-signature"].split(" ")
        if len(signatures) == 2:
            twice += 1
            if len(valid) != 2:
                failures.append(f"request {n}: two signatures but {len(valid)} secrets verify it")
        tampered = {
            "body": (body + b" ", headers),
            "id": (body, {**headers, "webhook-id": headers["webhook-id"] + "x"}),
            "timestamp": (body, {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)}),
            "signature": (body, {**headers, "webhook-signature": "v1," + base64.b64encode(b"0" * 32).decode()}),
        }
        for what, (b, h) in tampered.items():
            if any(verifies(s, b, h) for s in keys):
                failures.append(f"request {n}: a copy with its {what} changed verified")
    print(f"{len(logged)} deliveries verified by standardwebhooks; types {sorted(types)}; "
          f"{twice} signed with two secrets; every tampered copy refused")
    if len(logged) < int(min_count):
        failures.append(f"only {len(logged)} deliveries arrived, expected at least {min_count}")
    if twice == 0:
        failures.append("no delivery was signed by two secrets (rotation)")
    for failure in failures:
        print("FAIL:", failure, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    {"serve": serve, "check": check}[sys.argv[1]](*sys.argv[2:])
