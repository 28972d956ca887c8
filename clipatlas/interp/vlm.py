"""Labels and judgements from a vision-language model behind any OpenAI-compatible
chat-completions endpoint (OpenAI, Gemini's OpenAI-compatible endpoint, vLLM, Ollama,
llama.cpp server), through the official `openai` client.

* Prompts are versioned template files (`prompts/<kind>-v<N>.txt`); the version is part of every
  stored label and of the cache key.
* Calls overlap up to `concurrency`; the client retries timeouts, 429s (waiting as `Retry-After`
  says) and 5xx with backoff; each call has a timeout.
* Every answer is cached in `saes/NAME/interp/vlm_cache.sqlite`, keyed by (model, prompt version,
  feature, image ids), as soon as it arrives: a re-run or a killed run pays for nothing twice.
* The first call goes alone, so a wrong URL, key or model fails in one line before any other.
* The API key is read from an environment variable and is never printed, logged or written.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from clipatlas.atlas.thumbs import thumbnail_image
from clipatlas.errors import UserError
from clipatlas.interp.config import VLMConfig
from clipatlas.interp.data import FeatureView, StoreData
from clipatlas.interp.judges import Judge
from clipatlas.interp.labellers import Labeller
from clipatlas.interp.types import Draft

log = logging.getLogger(__name__)
LABEL_PROMPT, JUDGE_PROMPT, INTRUDER_PROMPT = "label-v1", "judge-v1", "intruder-v1"
MAX_TOKENS = 300
MALFORMED_RETRIES = 2  # a reply that is not the JSON asked for is asked again this many times
RETRIED_STATUSES = (408, 409, 429)  # the 4xx the client retries; any other 4xx is the request's fault
NO_KEY = "EMPTY"  # what local servers (vLLM, Ollama) accept when no key is set


class DryRun(Exception):
    """A dry run printed its first request and call count; nothing was sent."""


class MalformedAnswer(ValueError):
    """The model replied, but not with the JSON the prompt asked for."""


def load_prompt(version: str) -> dict[str, str]:
    """The sections (`## name` headers) of a prompt template file."""
    text = resources.files("clipatlas.interp").joinpath(f"prompts/{version}.txt").read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        sections[name.strip()] = body.strip()
    return sections


def image_data_url(image, size: int) -> str:
    """A JPEG data URL of the image, its longest side at most `size` pixels."""
    buffer = io.BytesIO()
    thumbnail_image(image.convert("RGB"), size).convert("RGB").save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def parse_json_object(content: str | None) -> dict[str, Any]:
    """The first JSON object in a reply (models wrap it in prose or code fences)."""
    match = re.search(r"\{.*\}", content or "", flags=re.S)
    if not match:
        raise MalformedAnswer(f"no JSON object in the reply {_clip(content)!r}")
    try:
        found = json.loads(match.group(0))
    except json.JSONDecodeError:
        raise MalformedAnswer(f"unreadable JSON in the reply {_clip(content)!r}") from None
    if not isinstance(found, dict):
        raise MalformedAnswer(f"the reply's JSON is not an object: {_clip(content)!r}")
    return found


def _clip(text: str | None, n: int = 80) -> str:
    text = text or ""
    return text if len(text) <= n else text[:n] + "..."


@dataclass
class Request:
    """One chat-completions call: its cache key, its messages, and how to read the reply."""

    key: str
    messages: list[dict[str, Any]]
    parse: Callable[[str | None], Any]


@dataclass
class Usage:
    calls: int = 0  # HTTP requests sent, retries included
    answered: int = 0  # replies read
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def format(self) -> str:
        return (
            f"VLM: {self.answered} answers ({self.calls} HTTP requests with retries), {self.cached} from the cache, "
            f"{self.failed} failed; tokens: {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion"
        )


def cache_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class AnswerCache:
    """Parsed answers by key, in SQLite; each is committed as it arrives."""

    def __init__(self, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, check_same_thread=False)
        # WAL without an fsync per commit: a killed process loses nothing (the OS has the pages); an
        # fsync per answer cost 19 ms of the event loop's time, the client's largest cost (bench/interp.py).
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.conn.commit()
        self.lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self.lock:
            row = self.conn.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: Any) -> None:
        with self.lock, self.conn:
            self.conn.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(value)))

    def close(self) -> None:
        self.conn.close()


@dataclass
class VLMClient:
    """Sends requests with bounded concurrency, caches answers, turns fatal errors into one line."""

    config: VLMConfig
    cache_path: Any
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self):
        self.config.require_endpoint()
        for noisy in ("openai", "httpx", "httpx2", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)  # request logs could carry headers

    def run(self, requests: list[Request], desc: str) -> list[Any] | None:
        """Answers in order (None where a call failed); None for a dry run."""
        cache = AnswerCache(self.cache_path)
        try:
            answers = [cache.get(r.key) for r in requests]
            self.usage.cached += sum(a is not None for a in answers)
            pending = [i for i, a in enumerate(answers) if a is None]
            if self.config.dry_run:
                print_dry_run(
                    requests[pending[0]] if pending else None, len(pending), len(requests) - len(pending), self.config
                )
                return None
            if pending:
                asyncio.run(self._run(requests, pending, answers, cache, desc))
            return answers
        finally:
            cache.close()

    async def _run(self, requests, pending, answers, cache, desc) -> None:
        import openai

        async def count_request(_request):
            self.usage.calls += 1

        http_client = openai.DefaultAsyncHttpxClient(event_hooks={"request": [count_request]})
        client = openai.AsyncOpenAI(
            base_url=self.config.base_url,
            api_key=os.environ.get(self.config.api_key_env) or NO_KEY,
            timeout=self.config.timeout,
            max_retries=self.config.max_retries,
            http_client=http_client,
        )
        semaphore = asyncio.Semaphore(self.config.concurrency)
        progress = tqdm(total=len(pending), desc=desc, unit="call", leave=False)

        async def one(i: int) -> None:
            async with semaphore:
                answers[i] = await self._ask(client, requests[i])
            if answers[i] is not None:
                cache.put(requests[i].key, answers[i])
            progress.update()

        try:
            await one(pending[0])  # alone: a wrong URL, key or model fails here, once
            await asyncio.gather(*(one(i) for i in pending[1:]))
        finally:
            progress.close()
            await client.close()

    async def _ask(self, client, request: Request) -> Any | None:
        import openai

        for attempt in range(MALFORMED_RETRIES + 1):
            try:
                response = await client.chat.completions.create(
                    model=self.config.model, messages=request.messages, max_tokens=MAX_TOKENS, temperature=0
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise UserError(
                    f"{self.config.base_url} refused the API key ({exc.status_code}); set the key in "
                    f"${self.config.api_key_env}"
                    + ("" if os.environ.get(self.config.api_key_env) else " (it is not set)")
                ) from None
            except openai.NotFoundError as exc:
                raise UserError(
                    f"{self.config.base_url} answered 404 for model {self.config.model!r}: the model name is unknown "
                    f"there, or --base-url lacks its API path (e.g. /v1); the server said: {_server_says(exc)}"
                ) from None
            except openai.APITimeoutError:
                log.warning("a call timed out after %d retries", self.config.max_retries)
                self.usage.failed += 1
                return None
            except openai.APIConnectionError:
                raise UserError(
                    f"cannot reach {self.config.base_url}; check --base-url and that the server is running"
                ) from None
            except openai.APIStatusError as exc:
                if 400 <= exc.status_code < 500 and exc.status_code not in RETRIED_STATUSES:
                    raise UserError(
                        f"{self.config.base_url} refused the request ({exc.status_code}): {_server_says(exc)}"
                    ) from None
                log.warning(
                    "a call failed after %d retries: %s %s", self.config.max_retries, exc.status_code, _server_says(exc)
                )
                self.usage.failed += 1
                return None
            except (openai.APIResponseValidationError, json.JSONDecodeError) as exc:  # a reply that is not the protocol
                log.warning("unreadable response: %s", exc)
                continue
            self.usage.answered += 1
            if response.usage is not None:
                self.usage.prompt_tokens += response.usage.prompt_tokens or 0
                self.usage.completion_tokens += response.usage.completion_tokens or 0
            content = response.choices[0].message.content if response.choices else None
            try:
                return request.parse(content)
            except MalformedAnswer as exc:
                log.warning("malformed answer (try %d of %d): %s", attempt + 1, MALFORMED_RETRIES + 1, exc)
        self.usage.failed += 1
        return None


def _server_says(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body
    return _clip(str(body if body else exc), 200)


def print_dry_run(request: Request | None, n_calls: int, n_cached: int, config: VLMConfig) -> None:
    if request is None:
        print(f"dry run: all {n_cached} answers are cached; no call would be made")
        return
    shown = {
        "model": config.model,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "messages": _without_images(request.messages),
    }
    print(f"dry run: the first request to {config.base_url}/chat/completions:")
    print(json.dumps(shown, indent=2))
    print(f"dry run: {n_calls} calls would be made ({n_cached} answers already cached), {config.concurrency} at once")


def _without_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_url", "image_url": {"url": f"<jpeg, {len(part['image_url']['url']) * 3 // 4:,} bytes>"}}
                if part.get("type") == "image_url"
                else part
                for part in content
            ]
        out.append({**message, "content": content})
    return out


def _images(urls: list[str]) -> list[dict[str, Any]]:
    return [{"type": "image_url", "image_url": {"url": url}} for url in urls]


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def parse_label(content: str | None) -> dict[str, str]:
    found = parse_json_object(content)
    label = found.get("label")
    if not isinstance(label, str) or not label.strip() or "\n" in label.strip() or len(label.strip()) > 80:
        raise MalformedAnswer(f"no short one-line label in {_clip(content)!r}")
    description = found.get("description")
    return {"label": label.strip(), "description": description.strip() if isinstance(description, str) else ""}


class VLMLabeller(Labeller):
    """Shows the model the feature's strongest labelling images, a few from its lower activation
    quantiles (the paper's recipe), and a few silent images for contrast; asks for a short label
    and a one-sentence description."""

    name = "vlm"
    prompt_version = LABEL_PROMPT

    def __init__(self, data: StoreData, config: VLMConfig):
        self.config, self.data = config, data
        self.client = VLMClient(config, data.atlas.files.vlm_cache)
        self.model = config.model or ""
        self.prompt = load_prompt(LABEL_PROMPT)

    def shown_rows(self, view: FeatureView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(strongest, from lower quantiles, silent) rows the model sees."""
        rows = view.rows
        strong = rows[: self.config.n_top]
        rest = rows[self.config.n_top :]
        picks = (
            np.unique(np.round(np.linspace(0, len(rest) - 1, self.config.n_quantile)).astype(int)) if len(rest) else []
        )
        weak = rest[picks] if len(rest) else rest
        return strong, weak, view.background(self.config.n_contrast)

    def request(self, view: FeatureView) -> Request:
        strong, weak, contrast = self.shown_rows(view)
        url = lambda row: image_data_url(view.open_image(row), self.config.image_size)  # noqa: E731
        content = [_text(self.prompt["strong"]), *_images([url(r) for r in strong])]
        if len(weak):
            content += [_text(self.prompt["weak"]), *_images([url(r) for r in weak])]
        if len(contrast):
            content += [_text(self.prompt["contrast"]), *_images([url(r) for r in contrast])]
        content.append(_text(self.prompt["task"]))
        key = cache_key(
            model=self.config.model,
            prompt=LABEL_PROMPT,
            feature=view.feature,
            images=[view.image_ids(part) for part in (strong, weak, contrast)],
        )
        messages = [{"role": "system", "content": self.prompt["system"]}, {"role": "user", "content": content}]
        return Request(key, messages, parse_label)

    def __call__(self, view: FeatureView) -> Draft | None:
        return self.label_all([view])[0]

    def label_all(self, views: list[FeatureView]) -> list[Draft | None] | None:
        requests = [self.request(v) for v in tqdm(views, desc="preparing VLM requests", unit="feature", leave=False)]
        answers = self.client.run(requests, "vlm labels")
        if answers is None:
            return None
        print(self.client.usage.format())
        drafts = []
        for view, answer in zip(views, answers):
            if answer is None:
                drafts.append(None)
                continue
            strong, weak, contrast = self.shown_rows(view)
            seen = {
                "strong": view.image_ids(strong),
                "weak": view.image_ids(weak),
                "contrast": view.image_ids(contrast),
            }
            drafts.append(Draft(answer["label"], answer["description"], {"images": seen}))
        return drafts


def parse_matches(n: int) -> Callable[[str | None], list[int]]:
    def parse(content: str | None) -> list[int]:
        found = parse_json_object(content).get("matches")
        if not isinstance(found, list) or not all(isinstance(i, int) and 1 <= i <= n for i in found):
            raise MalformedAnswer(f"no list of image numbers 1..{n} in {_clip(content)!r}")
        return sorted(set(found))

    return parse


def parse_odd(n: int) -> Callable[[str | None], int]:
    def parse(content: str | None) -> int:
        found = parse_json_object(content).get("odd")
        if not isinstance(found, int) or not 1 <= found <= n:
            raise MalformedAnswer(f"no image number 1..{n} in {_clip(content)!r}")
        return found

    return parse


class VLMJudge(Judge):
    """Detection: the model sees the label and images in shuffled batches and lists the matching
    ones (fit 1, else 0). Intruder: it names the image that does not belong."""

    name = "vlm"

    def __init__(self, data: StoreData, config: VLMConfig):
        self.data, self.config = data, config
        self.client = VLMClient(config, data.atlas.files.vlm_cache)
        self.model = config.model or ""

    def _url(self, row: int) -> str:
        return image_data_url(self.data.store.open_image(int(row)), self.config.image_size)

    def _request(self, version: str, rows: np.ndarray, parse, **fields) -> Request:
        prompt = load_prompt(version)
        content = [
            _text(prompt["images"]),
            *_images([self._url(r) for r in rows]),
            _text(prompt["task"].format(n=len(rows), **fields)),
        ]
        messages = [{"role": "system", "content": prompt["system"]}, {"role": "user", "content": content}]
        ids = [self.data.image_ids[r] for r in rows]
        return Request(cache_key(model=self.config.model, prompt=version, images=ids, **fields), messages, parse)

    def __call__(self, items):
        requests, where = [], []
        for item, (text, rows) in enumerate(items):
            order = np.random.default_rng([len(rows), item]).permutation(len(rows))  # no batch of positives only
            for start in range(0, len(rows), self.config.judge_batch):
                chunk = order[start : start + self.config.judge_batch]
                requests.append(self._request(JUDGE_PROMPT, rows[chunk], parse_matches(len(chunk)), label=text))
                where.append((item, chunk))
        answers = self.client.run(requests, "vlm judgements")
        if answers is None:
            raise DryRun
        fits = [np.full(len(rows), np.nan) for _, rows in items]
        for (item, chunk), answer in zip(where, answers):  # a call that failed leaves its images undecided (0.5)
            fits[item][chunk] = 0.5 if answer is None else np.isin(np.arange(1, len(chunk) + 1), answer)
        print(self.client.usage.format())
        return fits

    def odd_one_out(self, trials):
        requests = [self._request(INTRUDER_PROMPT, rows, parse_odd(len(rows))) for rows in trials]
        answers = self.client.run(requests, "vlm intruder")
        if answers is None:
            raise DryRun
        print(self.client.usage.format())
        return [-1 if answer is None else answer - 1 for answer in answers]
