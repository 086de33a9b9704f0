"""The HTTP floor of this machine: a raw ASGI app under uvicorn that reads the body and answers any POST with a fixed
OpenAI-shaped embedding answer (one 384-float vector, MiniLM's size) and GET /ready with 200. The idle-server row is
measured against it with the same client and pacing: what any Python server pays on this machine before it does work.

Run: `python -m uvicorn --app-dir bench noop_app:app --port N`."""

from __future__ import annotations

import json

ANSWER = json.dumps({
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.051031] * 384}],
    "model": "noop",
    "usage": {"prompt_tokens": 16, "total_tokens": 16},
}).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "noop", "object": "model"}]}).encode()


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            event = (await receive())["type"]  # lifespan.startup, then lifespan.shutdown
            await send({"type": event + ".complete"})
            if event == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = MODELS if scope["path"].endswith("/models") else ANSWER if scope["method"] == "POST" else b"{}"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
