"""An OpenAI-compatible HTTP server over the batched engine (FastAPI + uvicorn; ``pip install 'dsv3[serve]'``).

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``"stream": true`` as
server-sent events; ``"n"``: up to 16 completions of one prompt, choice i sampled with seed + i, each its
own sequence in the batch), ``GET /v1/models``, ``GET /health``.

One scheduler thread owns the :class:`dsv3.engine.Engine`: HTTP handlers check and tokenise a request
(a bad one gets a 400/404 with an OpenAI-style error body), hand it to the scheduler and read its
chunks from an asyncio queue. The scheduler admits requests into free slots between steps, so
concurrent clients decode in the same batched forward call. A client that disconnects (mid-stream or
while waiting) cancels its request and frees its slot at the next step.

    dsv3 serve path/to/checkpoint --port 8000
    openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none").chat.completions.create(...)
"""
import asyncio
import json
import queue
import threading
import time
import traceback
import uuid

from .openai_protocol import (BadRequest, chat_logprobs, choice_count, choice_seed, completion_logprobs, messages_of,
                              prompt_of, sampling_args)

__all__ = ["Scheduler", "create_app", "serve"]

_DONE = object()


class Scheduler:
    """The thread that runs the engine: takes requests and cancellations from an inbox, steps the
    engine while anything runs, and delivers each request's chunks to its asyncio queue."""

    def __init__(self, engine):
        self.engine = engine
        self.inbox = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dsv3-scheduler", daemon=True)
        self.steps = 0
        self.error = None

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self.inbox.put(None)
        self._thread.join(timeout=10)

    def submit(self, req, loop, q=None, tag=None):
        """Queue a request made by ``engine.make_request``; returns the asyncio.Queue of its chunks
        (``_DONE`` last, or an Exception). With ``tag`` (several requests sharing ``q``) every item
        arrives as ``(tag, item)``."""
        q = asyncio.Queue() if q is None else q
        req.sink = (loop, q, tag)
        self.inbox.put(("add", req))
        return q

    def cancel(self, req):
        self.inbox.put(("cancel", req))

    @staticmethod
    def _send(req, item):
        loop, q, tag = req.sink
        try:
            loop.call_soon_threadsafe(q.put_nowait, item if tag is None else (tag, item))
        except RuntimeError:  # the event loop is closed (server shutting down)
            pass

    def _take(self, block):
        try:
            msg = self.inbox.get(timeout=0.2) if block else self.inbox.get_nowait()
        except queue.Empty:
            return False
        if msg is None:
            return False
        op, req = msg
        if op == "add":
            if req.state.cancelled:
                return True
            self.engine.add(req)
            if req.finished:  # max_new_tokens 0
                self._send(req, _DONE)
        else:
            if not req.finished:
                self.engine.cancel(req)
        return True

    def _run(self):
        eng = self.engine
        while not self._stop.is_set():
            while self._take(block=False):
                pass
            if eng.idle:
                self._take(block=True)
                continue
            try:
                done = eng.step()
            except Exception as e:  # a bug or memory: fail the running requests, keep serving
                self.error = traceback.format_exc()
                for req in list(eng.running) + list(eng.waiting):
                    eng.cancel(req)
                    self._send(req, RuntimeError(f"engine step failed: {e}"))
                continue
            self.steps += 1
            for req in done:
                for chunk in req.new_chunks:
                    self._send(req, chunk)
                if req.finished:
                    self._send(req, _DONE)


# ---------------------------------------------------------------- responses
def _error(status, message, param=None):
    from fastapi.responses import JSONResponse
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


def create_app(engine, model_name="dsv3", scheduler=None):
    """The FastAPI app serving ``engine`` under ``model_name``; starts its scheduler thread (stopped
    at the app's shutdown). ``app.state.scheduler`` is the :class:`Scheduler`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    sched = scheduler or Scheduler(engine)
    created = int(time.time())
    tok = engine.tokenizer

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if not sched._thread.is_alive():
            sched.start()
        yield
        sched.stop()

    app = FastAPI(title="dsv3", lifespan=lifespan)
    app.state.scheduler = sched

    @app.exception_handler(BadRequest)
    async def _bad(request, e):
        return _error(e.status, str(e), e.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e):
        return _error(400, "invalid request: " + "; ".join(str(x.get("msg")) for x in e.errors()[:3]))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e):
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _any(request, e):
        return _error(500, f"internal error: {type(e).__name__}: {e}")

    @app.get("/health")
    async def health():
        eng = sched.engine
        out = {"status": "ok" if sched._thread.is_alive() else "stopped", "running": len(eng.running),
               "waiting": len(eng.waiting), "free_slots": len(eng.free), "steps": sched.steps,
               "max_batch": eng.max_batch, "kv_cache_bytes": eng.kv_cache_bytes}  # the slots' caches (MTP's too)
        spec = getattr(eng, "speculative_stats", None)
        if spec is not None:  # Engine(speculative="mtp"): drafts so far
            out["speculative"] = {"rounds": spec.rounds, "drafted": spec.drafted, "accepted": spec.accepted,
                                  "acceptance_rate": spec.acceptance_rate}
        return out

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "dsv3", "max_model_len": engine.max_seq_len}]}

    async def body_of(request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not valid JSON ({e})")
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        m = body.get("model")
        if m is not None and m != model_name:
            raise BadRequest(f"model {m!r} not found; this server serves {model_name!r}", status=404, param="model")
        return body

    def make(inputs, kw, n):
        """The n requests of one body (choice i samples with seed + i), checked before any is queued."""
        try:
            return [engine.make_request(inputs, **choice_seed(kw, i)) for i in range(n)]
        except (ValueError, TypeError) as e:
            raise BadRequest(str(e)) from None

    def submit_all(reqs):
        """Queue the requests of one body; their items arrive on one queue tagged by choice index."""
        loop, q = asyncio.get_running_loop(), asyncio.Queue()
        for i, req in enumerate(reqs):
            sched.submit(req, loop, q, tag=i)
        return q

    def cancel_all(reqs):
        for req in reqs:
            if not req.finished:
                sched.cancel(req)

    async def run_to_end(request, reqs, q):
        """Every choice's chunks (a list per choice), or None when the client went away."""
        chunks, left = [[] for _ in reqs], len(reqs)
        try:
            while left:
                try:
                    i, item = await asyncio.wait_for(q.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        cancel_all(reqs)
                        return None
                    continue
                if item is _DONE:
                    left -= 1
                elif isinstance(item, Exception):
                    cancel_all(reqs)
                    raise item
                else:
                    chunks[i].append(item)
            return chunks
        except asyncio.CancelledError:
            cancel_all(reqs)
            raise

    def stream(reqs, q, render):
        async def gen():
            try:
                async for part in _iterate(len(reqs), q, render):
                    yield part
                yield "data: [DONE]\n\n"
            finally:  # finished, or the client went away (the generator is closed / cancelled)
                cancel_all(reqs)
        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _iterate(n, q, render):
        first, left = [True] * n, n
        while left:
            i, item = await q.get()
            if item is _DONE:
                left -= 1
                continue
            if isinstance(item, Exception):
                yield "data: " + json.dumps({"error": {"message": str(item), "type": "server_error"}}) + "\n\n"
                return
            for part in render(i, item, first[i]):
                yield "data: " + json.dumps(part, ensure_ascii=False) + "\n\n"
            first[i] = False

    def usage(reqs):
        p, c = len(reqs[0].state.prompt), sum(len(r.state.ids) for r in reqs)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "prompt_tokens_details": {"cached_tokens": reqs[0].cached_tokens}}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await body_of(request)
        kw = sampling_args(body, chat=False)
        reqs = make(prompt_of(body), kw, choice_count(body))
        rid, now = "cmpl-" + uuid.uuid4().hex[:24], int(time.time())
        q = submit_all(reqs)
        want_lp = kw.get("logprobs") is not None
        if body.get("stream"):
            def render(i, c, first):
                choice = {"index": i, "text": c.text, "finish_reason": c.finish_reason,
                          "logprobs": completion_logprobs(tok, [c]) if want_lp else None}
                yield {"id": rid, "object": "text_completion", "created": now, "model": model_name,
                       "choices": [choice]}
            return stream(reqs, q, render)
        chunks = await run_to_end(request, reqs, q)
        if chunks is None:
            return _error(499, "client closed the request")
        choices = [{"index": i, "text": r.state.text, "finish_reason": r.state.finish_reason or "length",
                    "logprobs": completion_logprobs(tok, chunks[i]) if want_lp else None} for i, r in enumerate(reqs)]
        return {"id": rid, "object": "text_completion", "created": now, "model": model_name, "choices": choices,
                "usage": usage(reqs)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await body_of(request)
        kw = sampling_args(body, chat=True)
        msgs = messages_of(body)
        if tok is None or not tok.chat_template:
            raise BadRequest("this model has no chat template (tokenizer_config.json); use /v1/completions")
        reqs = make(msgs, kw, choice_count(body))
        rid, now = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        q = submit_all(reqs)
        want_lp = kw.get("logprobs") is not None
        if body.get("stream"):
            def render(i, c, first):
                base = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_name}
                if first:
                    yield dict(base, choices=[{"index": i, "delta": {"role": "assistant", "content": ""},
                                               "finish_reason": None, "logprobs": None}])
                delta = {"content": c.text} if c.text else {}
                yield dict(base, choices=[{"index": i, "delta": delta, "finish_reason": c.finish_reason,
                                           "logprobs": chat_logprobs(tok, [c]) if want_lp else None}])
            return stream(reqs, q, render)
        chunks = await run_to_end(request, reqs, q)
        if chunks is None:
            return _error(499, "client closed the request")
        choices = [{"index": i, "message": {"role": "assistant", "content": r.state.text},
                    "finish_reason": r.state.finish_reason or "length",
                    "logprobs": chat_logprobs(tok, chunks[i]) if want_lp else None} for i, r in enumerate(reqs)]
        return {"id": rid, "object": "chat.completion", "created": now, "model": model_name, "choices": choices,
                "usage": usage(reqs)}

    return app


def serve(path, host="127.0.0.1", port=8000, max_batch=8, max_seq_len=4096, model_name=None, dtype=None,
          log_level="info", sock=None, ready=None, kv_cache_dtype="f32", prefix_cache=False, speculative=None,
          num_draft=2):
    """Load the checkpoint at ``path`` and serve it until interrupted. ``sock``: an already bound socket
    (tests bind port 0); ``ready``: a threading.Event set once the server accepts connections;
    kv_cache_dtype: "f32", "bf16" or "fp8" (:meth:`dsv3.Model.from_tensors`); ``prefix_cache``,
    ``speculative``, ``num_draft``: the engine's (dsv3.engine.Engine; "mtp" loads the checkpoint's MTP layer)."""
    import os

    import uvicorn

    from .engine import Engine
    from .model import Model

    model = Model.from_pretrained(path, dtype=dtype, max_seq_len=max_seq_len, kv_cache_dtype=kv_cache_dtype,
                                  mtp=speculative == "mtp")
    engine = Engine(model, max_batch=max_batch, max_seq_len=max_seq_len, prefix_cache=prefix_cache,
                    speculative=speculative, num_draft=num_draft)
    name = model_name or os.path.basename(os.path.normpath(path))
    app = create_app(engine, name)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    return run_server(server, sock=sock, ready=ready)


def run_server(server, sock=None, ready=None):
    """Run a uvicorn.Server (in the calling thread) and set ``ready`` when it has started."""
    async def main():
        task = asyncio.create_task(server.serve(sockets=[sock] if sock is not None else None))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if ready is not None:
            ready.set()
        await task
    asyncio.run(main())
    return server
