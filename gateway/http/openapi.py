"""The gateway's OpenAPI document, served at ``/openapi.json``.

Litestar generates the paths, operation ids and path parameters from the route handlers. The
handlers read the raw request (so that a bad body gets our own 400 naming the field), which
leaves Litestar nothing to describe the bodies with; ``document`` adds them here: each
operation's request body (the schemas next to the parser in ``gateway.http.openai_params``), its
responses (the 200 shapes and OpenAI's error body for every 4xx/5xx it can answer) and, when the
config has API keys, its security requirement.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from gateway.access.keyring import keys_required
from gateway.config.schema import Config
from gateway.runtime.states import ModelState
from gateway.http.admin_params import PLAN_PREVIEW_REQUEST_SCHEMA
from gateway.http.responses import REQUEST_SCHEMA as RESPONSE_REQUEST_SCHEMA
from gateway.http.openai_params import (
    CHAT_REQUEST_SCHEMA,
    COMPLETION_REQUEST_SCHEMA,
    EMBEDDING_REQUEST_SCHEMA,
)

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"  # Litestar's own router for the document (it also answers /docs/openapi.json)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_INT = {"type": "integer"}
_STR = {"type": "string"}
_NULL_STR = {"type": ["string", "null"]}

# A stream stopped by its key's token budget ends before the worker has counted the prompt.
_BUDGET_NULL = "null in a stream stopped by its API key's token budget (the prompt is not counted then)"
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": ["integer", "null"], "description": _BUDGET_NULL},
        "completion_tokens": _INT,
        "total_tokens": {"type": ["integer", "null"], "description": _BUDGET_NULL},
    },
}
_NOTE = {
    "type": "string",
    "description": "why the gateway ended the stream: its API key's tokens_per_minute ran out (finish_reason is then \"length\")",
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "description": "OpenAI's error body.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {"message": _STR, "type": _STR, "param": _NULL_STR, "code": _NULL_STR},
            }
        },
    },
    "Usage": _USAGE,
    "CreateChatCompletionRequest": CHAT_REQUEST_SCHEMA,
    "CreateCompletionRequest": COMPLETION_REQUEST_SCHEMA,
    "CreateEmbeddingRequest": EMBEDDING_REQUEST_SCHEMA,
    "CreateResponseRequest": RESPONSE_REQUEST_SCHEMA,
    "Response": {
        "type": "object",
        "description": "The Responses API's answer (stateless: never stored)",
        "required": ["id", "object", "created_at", "status", "model", "output"],
        "properties": {
            "id": _STR,
            "object": {"type": "string", "enum": ["response"]},
            "created_at": _INT,
            "status": {"type": "string", "enum": ["completed", "incomplete", "failed", "in_progress"]},
            "model": _STR,
            "output": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "id"],
                    "description": "a message item (output_text parts) or a function_call item",
                    "properties": {"type": {"type": "string", "enum": ["message", "function_call"]}, "id": _STR},
                },
            },
            "usage": {
                "type": ["object", "null"],
                "properties": {
                    "input_tokens": {"type": ["integer", "null"], "description": _BUDGET_NULL},
                    "output_tokens": _INT,
                    "total_tokens": {"type": ["integer", "null"], "description": _BUDGET_NULL},
                },
            },
        },
    },
    "ResponseStreamEvent": {
        "type": "object",
        "required": ["type", "sequence_number"],
        "description": "response.created, response.output_text.delta, ... response.completed (or response.incomplete, response.failed)",
        "properties": {"type": _STR, "sequence_number": _INT},
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": _STR,
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": _INT,
            "model": _STR,
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": _INT,
                        "message": {
                            "type": "object",
                            "required": ["role"],
                            "properties": {
                                "role": _STR,
                                "content": _NULL_STR,
                                "tool_calls": {"type": "array", "items": {"type": "object"}},
                            },
                        },
                        "finish_reason": {
                            "type": ["string", "null"],
                            "description": "\"length\" when max_tokens or the end of the context stopped it",
                        },
                        "logprobs": {"type": ["object", "null"]},
                    },
                },
            },
            "usage": _ref("Usage"),
        },
    },
    "Completion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": _STR,
            "object": {"type": "string", "enum": ["text_completion"]},
            "created": _INT,
            "model": _STR,
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "text", "finish_reason"],
                    "properties": {
                        "index": _INT,
                        "text": _STR,
                        "finish_reason": {"type": ["string", "null"]},
                        "logprobs": {"type": ["object", "null"]},
                    },
                },
            },
            "usage": _ref("Usage"),
            "note": _NOTE,
        },
    },
    "ChatCompletionChunk": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": _STR,
            "object": {"type": "string", "enum": ["chat.completion.chunk"]},
            "created": _INT,
            "model": _STR,
            "choices": {
                "type": "array",
                "description": "empty in the last chunk, the one with `usage` (stream_options.include_usage)",
                "items": {
                    "type": "object",
                    "required": ["index", "delta"],
                    "properties": {"index": _INT, "delta": {"type": "object"}, "finish_reason": {"type": ["string", "null"]}},
                },
            },
            "usage": _ref("Usage"),
            "note": _NOTE,
        },
    },
    "EmbeddingList": {
        "type": "object",
        "required": ["object", "data", "model"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["object", "embedding", "index"],
                    "properties": {
                        "object": {"type": "string", "enum": ["embedding"]},
                        "embedding": {
                            "anyOf": [
                                {"type": "array", "items": {"type": "number"}},
                                {"type": "string", "description": "encoding_format \"base64\": the little-endian float32 bytes"},
                            ],
                            "description": "the vector at unit length: one float per dimension, or base64",
                        },
                        "index": _INT,
                    },
                },
            },
            "model": _STR,
            "usage": _USAGE,
        },
    },
    "Model": {
        "type": "object",
        "description": "OpenAI's model object plus the gateway's state and planned vs allocated memory.",
        "required": ["id", "object", "created", "owned_by", "aliases", "state"],
        "properties": {
            "id": _STR,
            "object": {"type": "string", "enum": ["model"]},
            "created": _INT,
            "owned_by": _STR,
            "aliases": {"type": "array", "items": _STR},
            "state": {"type": "string", "enum": [s.value for s in ModelState]},
            "n_ctx": {"type": "integer", "description": "the configured context of one request"},
            "context_length": {"type": ["integer", "null"], "description": "the context the model was trained on (its GGUF header)"},
            "capabilities": {
                "type": "object",
                "description": "tools: chats answer with tool_calls (only the chat formats whose handlers parse them)",
                "properties": {"completion": {"type": "boolean"}, "chat": {"type": "boolean"}, "embeddings": {"type": "boolean"}, "tools": {"type": "boolean"}},
            },
            "chat_format": {"type": ["string", "null"], "description": "the chat format or GGUF template (chat_template.NAME) chats use"},
            "architecture": _NULL_STR,
            "n_params": {"type": ["integer", "null"]},
            "file_bytes": {"type": ["integer", "null"]},
            "quantization": {"type": ["string", "null"], "description": "the GGUF's file type, e.g. Q4_K_M"},
            "reason": _NULL_STR,
            "progress": {"type": "number"},
            "load_seconds": {"type": ["number", "null"]},
            "pid": {"type": ["integer", "null"]},
            "planned": {"type": ["object", "null"]},
            "allocated": {"type": "object"},
            "gpu_used_bytes": {"type": "object"},
            "memory": {
                "type": "object",
                "description": "predicted vs measured bytes per GPU at the last load, and the figure learned beyond the estimate",
                "properties": {"devices": {"type": "array", "items": {"type": "object"}}, "learned_bytes": _INT},
            },
            "queue": {
                "type": "object",
                "properties": {"running": _INT, "waiting": _INT, "max_concurrency": _INT, "queue_size": _INT},
            },
            "idle_ttl_s": {"type": ["number", "null"], "description": "an on-demand model's idle_ttl_s"},
            "unload_in_s": {"type": ["number", "null"], "description": "seconds until the idle TTL unloads it (ready and idle only)"},
        },
    },
    "ModelLog": {
        "type": "object",
        "required": ["id", "state", "pid", "lines"],
        "properties": {
            "id": _STR,
            "state": {"type": "string", "enum": [s.value for s in ModelState]},
            "pid": {"type": ["integer", "null"]},
            "lines": {"type": "array", "items": _STR},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"type": "string", "enum": ["list"]}, "data": {"type": "array", "items": _ref("Model")}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "models"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
            "models": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["state", "reason"],
                    "properties": {"state": _STR, "reason": _NULL_STR},
                },
            },
        },
    },
    "ReloadResult": {
        "type": "object",
        "required": ["reloaded", "problems", "unchanged", "removed", "changed", "added", "restarted", "not_applied"],
        "properties": {
            "reloaded": {"type": "boolean"},
            **{k: {"type": "array", "items": _STR} for k in ("problems", "unchanged", "removed", "changed", "added", "restarted")},
            # Settings read only at start (host, port, ...): "gateway.port: 8081 (the gateway runs with 8080 until it restarts)".
            "not_applied": {"type": "array", "items": _STR},
        },
    },
    "DrainResult": {
        "type": "object",
        "required": ["draining", "in_flight"],
        "properties": {"draining": {"type": "boolean"}, "in_flight": {"type": "integer", "minimum": 0}},
    },
    "KeyList": {
        "type": "object",
        "description": "Every API key in force, by name (never the key or its hash), and its last minute of use.",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "models", "admin", "requests_per_minute", "tokens_per_minute", "max_concurrency", "in_flight", "last_minute"],
                    "properties": {
                        "name": _STR,
                        "models": {"type": ["array", "null"], "items": _STR, "description": "names, aliases or globs; null: every model"},
                        "admin": {"type": "boolean"},
                        **{k: {"type": ["integer", "null"]} for k in ("requests_per_minute", "tokens_per_minute", "max_concurrency")},
                        "in_flight": _INT,
                        "last_minute": {
                            "type": "object",
                            "required": ["requests", "tokens", "rejected"],
                            "properties": {"requests": _INT, "tokens": _INT, "rejected": {"type": "object", "additionalProperties": _INT}},
                        },
                    },
                },
            },
        },
    },
    "PlanPreviewRequest": PLAN_PREVIEW_REQUEST_SCHEMA,
    "MemoryMap": {
        "type": "object",
        "description": "One bar per GPU and one for host memory, and each model's block on them (gateway/http/memory_map.py).",
        "required": ["gpus", "host", "blocks"],
        "properties": {
            "gpus": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "name", "total_bytes", "free_bytes", "other_bytes", "reserve_bytes", "note"],
                    "properties": {
                        "index": _INT,
                        "name": _STR,
                        "total_bytes": _INT,
                        "free_bytes": _INT,
                        "other_bytes": {**_INT, "description": "in use, not by this gateway's models"},
                        "reserve_bytes": {**_INT, "description": "kept free by [planner] reserve_mib"},
                        "note": {**_NULL_STR, "description": "why the planner does not use this GPU"},
                    },
                },
            },
            "host": {
                "type": ["object", "null"],
                "properties": {"total_bytes": _INT, "free_bytes": _INT, "other_bytes": _INT},
            },
            "blocks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["model", "state", "gpu", "planned_bytes"],
                    "properties": {
                        "model": _STR,
                        "state": _STR,
                        "gpu": {"type": ["integer", "null"], "description": "null: host memory"},
                        "layers": {"type": ["integer", "null"]},
                        **{
                            k: {"type": ["integer", "null"]}
                            for k in (
                                "planned_bytes",
                                "weights_bytes",
                                "kv_bytes",
                                "compute_bytes",
                                "overhead_bytes",
                                "allocated_bytes",
                                "process_bytes",
                            )
                        },
                    },
                },
            },
            "shortfalls": {
                "type": "array",
                "description": "plan preview only: each model that does not fit for want of memory, where it came closest",
                "items": {
                    "type": "object",
                    "required": ["model", "gpu", "short_bytes", "need_bytes", "room_bytes", "placed_layers", "gpu_layers", "tried_gpus"],
                    "properties": {
                        "model": _STR,
                        "gpu": {"type": ["integer", "null"], "description": "where filling stopped; null: over its max_vram_mib"},
                        "short_bytes": {**_INT, "description": "need_bytes - room_bytes"},
                        "need_bytes": {**_INT, "description": "its share on that GPU (null gpu: its total)"},
                        "room_bytes": {**_INT, "description": "left on that GPU after the models placed (null gpu: the cap)"},
                        "placed_layers": {**_INT, "description": "GPU layers that fit on the GPUs tried before it"},
                        "gpu_layers": {**_INT, "description": "its GPU layers in all"},
                        "tried_gpus": {"type": "array", "items": _INT, "description": "the GPUs of the attempt, in device order"},
                    },
                },
            },
        },
    },
    "PlanPreview": {
        "type": "object",
        "required": ["valid", "fits", "problems", "inventory", "on_demand", "map"],
        "properties": {
            "valid": {"type": "boolean", "description": "the text parsed and every model file was read"},
            "fits": {"type": "boolean", "description": "valid, and every model fits"},
            "problems": {
                "type": "array",
                "items": _STR,
                "description": "every problem, with its dotted path (models[1].n_ctx: ...) or 'plan: '",
            },
            "inventory": {"type": "string", "enum": ["declared", "nvml"]},
            "on_demand": {"type": "array", "items": _STR, "description": "models placed when first asked for (not on the map)"},
            "map": {"anyOf": [_ref("MemoryMap"), {"type": "null"}]},
        },
    },
}

_MODEL_NAME_PARAMETER = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "a model's name or alias (it may contain '/')",
    "schema": _STR,
}

# POST /admin/models/{name}/load, .../unload, .../restart and GET .../logs are served by two
# routes that take the rest of the path (gateway/http/routes/admin.py), which Litestar cannot
# describe: described here.
EXTRA_PATHS: dict[str, dict[str, Any]] = {
    **{
        f"/admin/models/{{name}}/{action}": {
            "post": {"operationId": f"{action}Model", "parameters": [_MODEL_NAME_PARAMETER]}
        }
        for action in ("load", "unload", "restart")
    },
    "/admin/models/{name}/logs": {"get": {"operationId": "modelLogs", "parameters": [_MODEL_NAME_PARAMETER]}},
}

_REQUEST_ID = {"X-Request-Id": {"description": "the request's id (the client's, when it sent one)", "schema": _STR}}
_RETRY_AFTER = {"Retry-After": {"required": True, "description": "seconds", "schema": _STR}}

_ERRORS: dict[str, str] = {
    "400": "Malformed JSON, a field of the wrong type (named in `param`), a prompt longer than the context",
    "401": "A missing or wrong API key",
    "403": "The API key may not use this model (outside its `models`; also for a name that does not exist)",
    "404": "An unknown model (the message lists the known ones)",
    "413": "A body over `max_body_bytes`",
    "415": "A body that is not `Content-Type: application/json`",
    "429": (
        "The model's queue is full, or the API key's requests_per_minute, tokens_per_minute or max_concurrency "
        "is reached (its limits are in the `x-ratelimit-*` headers): retry after `Retry-After` seconds"
    ),
    "503": "The model is not serving (failed, restarting, stopped) or the request waited longer than `request_timeout_s`",
}


def _error(status: str, description: str | None = None) -> dict[str, Any]:
    headers = dict(_REQUEST_ID)
    if status in ("429", "503"):
        headers.update(_RETRY_AFTER)
    return {
        "description": description or _ERRORS[status],
        "headers": headers,
        "content": {"application/json": {"schema": _ref("Error")}},
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _event(chunk: str) -> dict[str, Any]:
    """One server-sent event: its data is a JSON chunk, an in-band error, or the final [DONE].

    (OpenAPI 3.1 has no word for a stream's items; as OpenAPI 3.2's ``itemSchema`` does, and as
    schemathesis reads a 3.1 ``schema`` for text/event-stream, this describes one event.)
    """
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": _STR,
            "data": {
                "anyOf": [
                    {"type": "string", "enum": ["[DONE]"]},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [_ref(chunk), _ref("Error")]},
                    },
                ]
            },
        },
    }


def _generation(schema: str, chunk: str, what: str) -> dict[str, Any]:
    return {
        "description": (
            f"The {what}; with `stream: true`, server-sent events: one `data:` line per chunk, an error "
            "that happens after the first chunk as an OpenAI error body in-band, then `data: [DONE]`"
        ),
        "headers": dict(_REQUEST_ID),
        "content": {"application/json": {"schema": _ref(schema)}, "text/event-stream": {"schema": _event(chunk)}},
    }


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


_MODEL_ERRORS = ("400", "401", "403", "404", "413", "415", "429", "503")

# operationId -> what Litestar cannot know; "auth" is the guard's kind (see app._guard).
OPERATIONS: dict[str, dict[str, Any]] = {
    "createChatCompletion": {
        "summary": "Create a chat completion",
        "auth": "api",
        "requestBody": _body("CreateChatCompletionRequest"),
        "responses": {"200": _generation("ChatCompletion", "ChatCompletionChunk", "chat completion"), **{s: _error(s) for s in _MODEL_ERRORS}},
    },
    "createCompletion": {
        "summary": "Create a completion",
        "auth": "api",
        "requestBody": _body("CreateCompletionRequest"),
        "responses": {"200": _generation("Completion", "Completion", "completion"), **{s: _error(s) for s in _MODEL_ERRORS}},
    },
    "createResponse": {
        "summary": "Create a model response (the Responses API, stateless)",
        "auth": "api",
        "requestBody": _body("CreateResponseRequest"),
        "responses": {
            "200": {
                "description": (
                    "The response; with `stream: true`, server-sent events: an `event:` and a `data:` line per "
                    "event, from response.created to response.completed (response.incomplete at "
                    "max_output_tokens, response.failed after an error)"
                ),
                "headers": dict(_REQUEST_ID),
                "content": {
                    "application/json": {"schema": _ref("Response")},
                    "text/event-stream": {
                        "schema": {
                            "type": "object",
                            "required": ["data"],
                            "properties": {
                                "event": _STR,
                                "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref("ResponseStreamEvent")},
                            },
                        }
                    },
                },
            },
            **{s: _error(s) for s in _MODEL_ERRORS},
        },
    },
    "createEmbedding": {
        "summary": "Create embeddings",
        "auth": "api",
        "requestBody": _body("CreateEmbeddingRequest"),
        "responses": {
            "200": {**_json("One embedding per input", "EmbeddingList"), "headers": dict(_REQUEST_ID)},
            **{s: _error(s) for s in _MODEL_ERRORS},
            "400": _error("400", _ERRORS["400"] + ", a model without `embedding = true`"),
        },
    },
    "listModels": {
        "summary": "List the models",
        "auth": "api",
        "responses": {"200": _json("Every configured model the API key may use", "ModelList"), "401": _error("401")},
    },
    "retrieveModel": {
        "summary": "Retrieve a model",
        "auth": "api",
        "responses": {"200": _json("One model, by name or alias", "Model"), "401": _error("401"), "403": _error("403"), "404": _error("404")},
    },
    "health": {
        "summary": "Health of the gateway and each model",
        "auth": "health",
        "responses": {
            "200": _json("At least one model serves (status ok or degraded)", "Health"),
            "503": _json("No model serves", "Health"),
            "401": _error("401"),
        },
    },
    "metrics": {
        "summary": "Prometheus metrics",
        "auth": "metrics",
        "responses": {
            "200": {
                "description": "Prometheus text (OpenMetrics when the Accept header asks for it)",
                "content": {"text/plain": {"schema": _STR}, "application/openmetrics-text": {"schema": _STR}},
            },
            "401": _error("401"),
        },
    },
    "reload": {
        "summary": "Re-read models.toml (as SIGHUP does)",
        "auth": "admin",
        "responses": {
            "200": _json("Reloaded: what was unchanged, removed, changed, added and restarted (unchanged but failed), and the new values of settings read only at start (not_applied)", "ReloadResult"),
            "422": _json("The new models.toml is invalid or does not fit: nothing changed", "ReloadResult"),
            "400": _error("400", "The gateway was started without a config file"),
            "401": _error("401", "No API key, or (without api_keys) a client that is not on loopback"),
            "409": _error("409", "A reload is already running"),
        },
    },
    "drain": {
        "summary": "Stop taking requests and wait for those in flight (what SIGTERM does first); no undo",
        "auth": "admin",
        "responses": {
            "200": _json("Drained: the requests still in flight after shutdown_grace_s (0 when all ended)", "DrainResult"),
            "401": _error("401", "No API key, or (without api_keys) a client that is not on loopback"),
            "403": _error("403", "A key without admin = true"),
        },
    },
    "listKeys": {
        "summary": "The API keys in force and their use over the last minute (gateway status)",
        "auth": "admin",
        "responses": {
            "200": _json("Each key by name, with its scope, limits, requests running and last minute", "KeyList"),
            "401": _error("401", "No API key, or (without api_keys) a client that is not on loopback"),
            "403": _error("403", "A key without admin = true"),
        },
    },
    "planPreview": {
        "summary": "Plan a models.toml without running it (gateway plan, for the web page)",
        "auth": "admin",
        "requestBody": _body("PlanPreviewRequest"),
        "responses": {
            "200": _json("The plan and every problem found; nothing running is touched", "PlanPreview"),
            "400": _error("400", "A body that is not a JSON object with a string `config`"),
            "401": _error("401", "No API key, or (without api_keys) a client that is not on loopback"),
            "413": _error("413"),
            "415": _error("415"),
        },
    },
    "loadModel": {
        "summary": "Load a model now: an on-demand one (evicting idle ones if needed), or an eager one that failed",
        "auth": "admin",
        "responses": {
            "200": _json("The model, ready (a model that is ready is left as it is)", "Model"),
            "401": _error("401", "No API key, or (without api_keys) a client that is not on loopback"),
            "404": _error("404"),
            "503": _error("503", "The model could not be loaded: why (the planner's explanation, or the worker's error)"),
        },
    },
    "unloadModel": {
        "summary": (
            "Unload an idle model: an on-demand one loads again on its next request, an eager one stays "
            "stopped until loadModel, restartModel or a reload"
        ),
        "auth": "admin",
        "responses": {
            "200": _json("The model, stopped", "Model"),
            "401": _error("401", "No API key, or (without api_keys) a client that is not on loopback"),
            "404": _error("404"),
            "409": _error("409", "The model has requests running or waiting"),
        },
    },
    "restartModel": {
        "summary": "Stop an idle model's worker and load it again, placed anew (gateway restart)",
        "auth": "admin",
        "responses": {
            "200": _json("The model, ready", "Model"),
            "401": _error("401", "No API key, or (without api_keys) a client that is not on loopback"),
            "404": _error("404"),
            "409": _error("409", "The model has requests running or waiting"),
            "503": _error("503", "The model could not be loaded again: why"),
        },
    },
    "modelLogs": {
        "summary": "The last lines the model's worker wrote to stderr (llama.cpp's log; gateway logs)",
        "auth": "admin",
        "responses": {
            "200": _json("The model's state, its worker's pid and log lines (none once it is unloaded)", "ModelLog"),
            "401": _error("401", "No API key, or (without api_keys) a client that is not on loopback"),
            "404": _error("404"),
        },
    },
}


def _needs_key(auth: str, config: Config) -> bool:
    g = config.gateway
    if not keys_required(config):
        return False
    return {"api": True, "admin": True, "health": g.health_requires_key, "metrics": g.metrics_requires_key}[auth]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vram-gateway")
    except PackageNotFoundError:
        return "0.0.0"


def openapi_config(current_config: Callable[[], Config]) -> OpenAPIConfig:
    """Litestar's OpenAPI settings; the document follows the config in force (reloads included)."""
    return OpenAPIConfig(
        title="vram-gateway",
        version=_version(),
        description="An OpenAI-compatible gateway for GGUF models planned onto the machine's GPUs.",
        path=DOCS_PATH,
        render_plugins=[_DocumentPlugin(current_config)],
        components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
    )


def document(app: Litestar, config: Config) -> dict[str, Any]:
    """Litestar's generated document with the bodies, responses and security added.

    Built on every call (a few ms, and only /openapi.json asks): a reload that changes api_keys
    changes the security requirements at once.
    """
    doc = copy.deepcopy(app.openapi_schema.to_schema())
    doc.setdefault("paths", {}).update(copy.deepcopy(EXTRA_PATHS))
    for item in doc.get("paths", {}).values():
        for op in item.values():
            extra = OPERATIONS.get(op.get("operationId")) if isinstance(op, dict) else None
            if extra is None:
                continue
            op["summary"] = extra["summary"]
            op["responses"] = copy.deepcopy(extra["responses"])
            if "requestBody" in extra:
                op["requestBody"] = copy.deepcopy(extra["requestBody"])
            op.pop("security", None)
            if _needs_key(extra["auth"], config):
                op["security"] = [{"bearer": []}]
                if extra["auth"] == "admin":  # every admin endpoint: the admin guard's one rule
                    op["responses"].setdefault("403", _error("403", "A key without admin = true"))
            elif extra["auth"] != "admin":
                # Without keys only the admin endpoint refuses anyone (clients not on loopback).
                op["responses"].pop("401", None)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(copy.deepcopy(SCHEMAS))
    if not keys_required(config):
        components.pop("securitySchemes", None)
    return doc


class _DocumentPlugin(JsonRenderPlugin):
    """Litestar's JSON plugin, serving ``document`` (at /docs and /docs/openapi.json)."""

    def __init__(self, current_config: Callable[[], Config]) -> None:
        super().__init__()
        self._config = current_config

    def render(self, request, openapi_schema: dict[str, Any]) -> bytes:  # type: ignore[override]
        return self.render_json(request, document(request.app, self._config()))
