"""`kvmesh serve`: an OpenAI-compatible HTTP server over one in-process model, with continuous batching.

    GET  /health                 200 while the server runs (no key needed)
    GET  /v1/models              the served model (its id is the spec it was loaded under; `max_model_len`)
    POST /v1/completions         prompt as text or token ids; `stream`, `stop`, `max_tokens`, `temperature`,
                                 `top_p`, `min_tokens`, `logprobs`, `echo`, `return_token_ids` (vLLM's: the ids)
    POST /v1/chat/completions    messages rendered with the model's chat template; `stream`, `logprobs` too

    bodies.py         what a request may say; fields it cannot honour are refused by name
    engine_thread.py  the thread that owns the running batch: admits, cancels, settles, bounds the queue
    protection.py     API key, body size, OpenAI's error body
    replies.py        answers in OpenAI's shapes
    app.py            the routes: a request becomes one row; a client that leaves cancels it

Every request becomes one row of the model's running batch (`kvmesh.llm.engine`), which one engine thread owns:
between decode steps it admits the rows that arrived, so concurrent requests join the batch that is already
decoding (continuous batching). A row that cannot go on (its logits not numbers) fails alone (HTTP 500 for its
request only). Streamed replies are the engine's own pieces, as server-sent events; usage comes last (with
`stream_options.include_usage`) and always carries `prompt_tokens_details.cached_tokens`: this engine keeps no
prefix cache across requests, so it is a true 0.

Caveats: one model per server; a sampled request without a `seed` draws from the batch's shared sampler (seeded
with `--seed`), so its reply depends on what it is batched with; with a `seed` it draws from its own. Greedy
replies never depend on what they are batched with.
"""

from kvmesh.llm.serve.app import ServerLimits, create_app
from kvmesh.llm.serve.engine_thread import EngineThread, ServerBusy

__all__ = ["EngineThread", "ServerBusy", "ServerLimits", "create_app"]
