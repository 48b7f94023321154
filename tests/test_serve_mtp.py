"""`dsv3 serve --speculative mtp`: the OpenAI server over a speculative engine (the MTP layer drafts) gives
the tokens of plain decoding, streamed or not, and reports the acceptance on /health; the command line
passes the option through and says clearly when the checkpoint has no MTP layer."""
import socket
import threading

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import dsv3  # noqa: E402
from serve_helpers import checkpoint_dir, free_port, load, served, start_serve  # noqa: E402
from test_chat_mtp import mtp_checkpoint_dir  # noqa: E402

def test_server_with_speculative_engine_equals_generate():
    import uvicorn

    from dsv3.engine import Engine
    from dsv3.server import create_app, run_server
    from dsv3.testing.mtp import agreeing_mtp
    base = load(max_seq_len=128)
    t = agreeing_mtp(dict(base._checkpoint.canonical_tensors()), base.config.num_hidden_layers, 0.3)
    m = dsv3.Model.from_tensors(base.config, t, mtp=True, max_seq_len=128)
    m.tokenizer = base.tokenizer
    engine = Engine(m, max_batch=3, speculative="mtp", num_draft=3)
    app = create_app(engine, "tiny")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    ready = threading.Event()
    th = threading.Thread(target=run_server, args=(srv,), kwargs={"sock": sock, "ready": ready}, daemon=True)
    th.start()
    try:
        assert ready.wait(60)
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        prompts = ["Hello! How are you", "Tell me a story", "Once upon a time"]
        results = [None] * 3

        def ask(i):
            results[i] = c.completions.create(model="tiny", prompt=prompts[i], max_tokens=16, temperature=0)
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for x in threads:
            x.start()
        for x in threads:
            x.join(60)
        for p, r in zip(prompts, results):
            assert r.choices[0].text == m.generate(p, 16)
        msgs = [{"role": "user", "content": "Hi 🙂"}]
        parts = [ev.choices[0].delta.content or "" for ev in
                 c.chat.completions.create(model="tiny", messages=msgs, max_tokens=14, temperature=0, stream=True)]
        assert "".join(parts) == m.generate(msgs, 14)
        h = httpx.get(url + "/health").json()
        assert h["status"] == "ok" and h["speculative"]["accepted"] > 0 and 0 < h["speculative"]["acceptance_rate"]
        # the slots' caches, the MTP layer's per-slot cache included
        assert h["max_batch"] == 3 and h["kv_cache_bytes"] == 3 * 128 * m.cache_bytes_per_token
    finally:
        srv.should_exit = True
        th.join(timeout=10)


def test_serve_command_speculative_mtp():
    with served(mtp_checkpoint_dir(), "--model-name", "tiny", "--speculative", "mtp", "--num-draft", "2") as port:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                       json={"model": "tiny", "prompt": "Hello", "max_tokens": 5, "temperature": 0}, timeout=60)
        ref = dsv3.Model.from_pretrained(mtp_checkpoint_dir(), max_seq_len=64).generate("Hello", 5)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == ref
        assert "speculative" in httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()


def test_serve_command_speculative_without_mtp_layer_says_so():
    p = start_serve(checkpoint_dir(), free_port(), "--model-name", "tiny", "--speculative", "mtp")
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 1
    assert "MTP layer" in out and "--keep-mtp" in out and "Traceback" not in out
