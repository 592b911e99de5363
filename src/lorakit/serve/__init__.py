"""Serving adapters over HTTP: an OpenAI-compatible API with continuous batching (`lorakit serve`).

`engine.py` owns the model (queue → batch → one forward per step, per-row adapters), `registry.py`
names the adapters (load, unload, allowed directory, LRU), `app.py` and `protocol.py` are the HTTP
side, `launch.py` turns the command's options into a running server. FastAPI and uvicorn come with
the `serve` extra: `pip install 'lorakit[serve]'`.
"""
