"""Example pipeline-side receiver for taskhook's webhooks.

Verifies each delivery's Standard Webhooks signature (the webhook-id,
webhook-timestamp and webhook-signature headers) with the `standardwebhooks`
library and prints the verified event. Answers 204 when the signature checks
out (taskhook marks the delivery done), 401 when it does not (taskhook
retries, then dead-letters), and 400 for a body that is not JSON.

A real receiver must be idempotent: a delivery can arrive more than once
(after a timeout, say) with the same webhook-id; use it to de-duplicate.

Environment:
  WEBHOOK_SECRET_FILE  file holding the shared secret, whsec_... (required)
  LISTEN_PORT          port to listen on (default 9000)
  WEBHOOK_PATH         path to accept deliveries on (default /taskhook)
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_BODY = 16 * 1024 * 1024


def load_secret() -> str:
    path = os.environ.get("WEBHOOK_SECRET_FILE", "/run/secrets/webhook_secret")
    with open(path, encoding="utf-8") as f:
        secret = f.read().strip()
    if not secret:
        sys.exit(f"receiver: {path} is empty")
    return secret


WEBHOOK = Webhook(load_secret())
PATH = os.environ.get("WEBHOOK_PATH", "/taskhook")


class Handler(BaseHTTPRequestHandler):
    server_version = "taskhook-example-receiver"

    def _answer(self, status: int, text: str = "") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/healthz":
            self._answer(200, "ok\n")
        else:
            self._answer(404, "not found\n")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != PATH:
            self._answer(404, "not found\n")
            return
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            self._answer(413, "too large\n")
            return
        body = self.rfile.read(length)
        try:
            event = WEBHOOK.verify(body, dict(self.headers.items()))
        except WebhookVerificationError as e:
            print(f"REJECTED {self.headers.get('webhook-id')}: {e}", flush=True)
            self._answer(401, "bad signature\n")
            return
        except ValueError:  # json.JSONDecodeError is a ValueError
            self._answer(400, "body is not JSON\n")
            return
        data = event.get("data", {}) if isinstance(event, dict) else {}
        print(
            "VERIFIED",
            self.headers.get("webhook-id"),
            event.get("type") if isinstance(event, dict) else "?",
            f"task={data.get('task_id')}",
            f"service={data.get('service')}",
            json.dumps(event, separators=(",", ":"))[:2000],
            flush=True,
        )
        self._answer(204)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass  # one line per event above is enough


def main() -> None:
    port = int(os.environ.get("LISTEN_PORT", "9000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"receiver: listening on :{port}{PATH}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
