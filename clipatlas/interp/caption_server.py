"""A local chat-completions server that answers like a VLM by reading the captions of the images
it is sent: for tests, the throughput benchmark, and trying the vlm labeller and judge offline.

It speaks the OpenAI protocol (POST /v1/chat/completions, images as data URLs) and recognises the
store's images by their exact bytes, as `vlm.image_data_url` encodes them. Answers are
deterministic: a label is the word most common in the captions of the images shown before the
contrast section; a judgement matches an image whose caption shares a word with the label; the odd
one out is the image whose caption shares the fewest words with the others. `Behaviour` scripts
failures (429 with Retry-After, 500, a stall past the client's timeout, malformed or empty
replies), a wrong key (401), unknown models (404), a per-answer delay, and a hang after N answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections import Counter
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from clipatlas.interp.text import STOPWORDS
from clipatlas.interp.vlm import INTRUDER_PROMPT, JUDGE_PROMPT, LABEL_PROMPT, image_data_url, load_prompt


def caption_words(caption: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", caption.lower()) if len(w) > 2 and w not in STOPWORDS]


@dataclass
class Behaviour:
    """What the server does; tests change it between calls."""

    api_key: str = "test-key"
    models: tuple[str, ...] = ("caption-vlm",)
    script: list[str] = field(
        default_factory=list
    )  # the next requests fail so: 429, 500, stall, malformed, empty, garbage
    retry_after: float = 1.0  # seconds, sent with 429
    stall_seconds: float = 5.0  # how long a "stall" request sleeps before answering
    delay: float = 0.0  # seconds each answer takes (a model's latency)
    hang_after: int | None = None  # answers after this many wait until `release` is set, then fail with 503


@dataclass
class Counters:
    requests: int = 0
    answers: int = 0  # replies with a real answer
    by_images: Counter = field(default_factory=Counter)  # answered requests per image set
    times: list[float] = field(default_factory=list)  # loop time of each request's arrival
    waiting: int = 0  # requests held by hang_after


class CaptionServer:
    """`make_app()` is the ASGI app; `counters` and `behaviour` are shared with the test."""

    def __init__(self, store, image_size: int = 256, behaviour: Behaviour | None = None):
        self.captions = {}
        for row in range(len(store)):
            url = image_data_url(store.open_image(row), image_size)
            self.captions[_digest(url)] = store.meta(row).get("caption") or ""
        self.behaviour = behaviour or Behaviour()
        self.counters = Counters()
        self.release = threading.Event()
        self.prompts = {version: load_prompt(version) for version in (LABEL_PROMPT, JUDGE_PROMPT, INTRUDER_PROMPT)}

    def make_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            b = self.behaviour
            self.counters.requests += 1
            self.counters.times.append(asyncio.get_running_loop().time())
            if request.headers.get("authorization") != f"Bearer {b.api_key}":
                return JSONResponse({"error": {"message": "Incorrect API key provided"}}, status_code=401)
            body = await request.json()
            if body.get("model") not in b.models:
                return JSONResponse({"error": {"message": f"The model {body.get('model')!r} does not exist"}}, 404)
            mode = b.script.pop(0) if b.script else "ok"
            if mode == "429":
                return JSONResponse(
                    {"error": {"message": "slow down"}}, 429, headers={"retry-after": str(b.retry_after)}
                )
            if mode == "500":
                return JSONResponse({"error": {"message": "the model crashed"}}, status_code=500)
            if mode == "garbage":
                return Response("<html>not json</html>", media_type="application/json")
            if mode == "stall":
                await asyncio.sleep(b.stall_seconds)
            if b.hang_after is not None and self.counters.answers >= b.hang_after:
                self.counters.waiting += 1
                await asyncio.to_thread(self.release.wait)
                return JSONResponse({"error": {"message": "abandoned"}}, status_code=503)
            if b.delay:
                await asyncio.sleep(b.delay)
            content, images = self.answer(body["messages"])
            if mode == "malformed":
                content = "I think these show " + content.replace("{", "").replace("}", "")
            elif mode == "empty":
                content = ""
            else:
                self.counters.answers += 1
                self.counters.by_images[hashlib.sha256("".join(images).encode()).hexdigest()] += 1
            return {
                "id": f"cmpl-{self.counters.requests}",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": 85 * len(images) + 60,
                    "completion_tokens": 20,
                    "total_tokens": 85 * len(images) + 80,
                },
            }

        return app

    def answer(self, messages: list[dict]) -> tuple[str, list[str]]:
        """The reply's content and the digests of the images it was about."""
        system = next(m["content"] for m in messages if m["role"] == "system")
        parts = next(m["content"] for m in messages if m["role"] == "user")
        texts = [p["text"] for p in parts if p["type"] == "text"]
        images = [_digest(p["image_url"]["url"]) for p in parts if p["type"] == "image_url"]
        captions = [self.captions.get(d, "") for d in images]
        if system == self.prompts[LABEL_PROMPT]["system"]:
            contrast_at = _index_after(parts, self.prompts[LABEL_PROMPT]["contrast"])
            words = Counter(w for c in captions[:contrast_at] for w in dict.fromkeys(caption_words(c)))
            label = min(words, key=lambda w: (-words[w], w)) if words else "nothing"
            return f'{{"label": "{label}", "description": "Images of a {label}."}}', images
        if system == self.prompts[JUDGE_PROMPT]["system"]:
            wanted = set(caption_words(re.search(r'Description: "(.*)"\.', texts[-1]).group(1)))
            matches = [i + 1 for i, c in enumerate(captions) if wanted & set(caption_words(c))]
            return f'{{"matches": {matches}}}', images
        shared = [sum(len(set(caption_words(c)) & set(caption_words(o))) for o in captions) for c in captions]
        return f'{{"odd": {shared.index(min(shared)) + 1}}}', images


def _index_after(parts: list[dict], section: str) -> int:
    """How many images come before the text part `section` (all of them when it is absent)."""
    count = 0
    for part in parts:
        if part["type"] == "text" and part["text"] == section:
            return count
        count += part["type"] == "image_url"
    return count


def _digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    """`python -m clipatlas.interp.caption_server -w W`: serve the store's captions as a VLM."""
    import argparse

    import uvicorn

    from clipatlas.store import Store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-w", "--workspace", required=True, help="workspace whose store images it will recognise")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each answer takes (a model's latency)")
    parser.add_argument("--image-size", type=int, default=256, help="the --image-size the client sends")
    args = parser.parse_args(argv)
    server = CaptionServer(Store.open(args.workspace), args.image_size, Behaviour(delay=args.delay))
    print(f"caption VLM at http://127.0.0.1:{args.port}/v1, model caption-vlm, key test-key", flush=True)
    uvicorn.run(server.make_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
