"""Tool calls in a model's own words: which family a chat template belongs to, and each
family's call syntax, parsed back into OpenAI tool calls and written as a GBNF grammar.

Pure: strings in, strings and dataclasses out (no llama.cpp, no I/O). The families and their
syntax follow llama.cpp's server (common/chat.cpp, ``--jinja``):

========================  ==============================================  =====================
family                    a call, as the model writes it                   told by (template)
========================  ==============================================  =====================
functionary-v3.2          ``>>>name\\n{args}`` (the prompt ends in ``>>>``)  ``>>>all``
functionary-v3.1          ``<function=name>{args}</function>``             ``<function=``
hermes (Qwen 2.5/3, ...)  ``<tool_call>\\n{"name": n, "arguments": a}\\n</tool_call>``  ``<tool_call>``
mistral                   ``[TOOL_CALLS][{"name": n, "arguments": a}, ...]``  ``[TOOL_CALLS]``
llama3 (3.1, 3.2, 3.3)    ``{"name": n, "parameters": a}``, maybe after     ``<|start_header_id|>``
                          ``<|python_tag|>``                               and ``tools``
========================  ==============================================  =====================

A template is asked in that order (Functionary 3.1 templates are Llama 3 templates too). The
text before a call's opening is the message's content; once a call opens, nothing more is
content (a streamed answer stops showing text there). Control tokens (Llama's
``<|python_tag|>``, Mistral's ``[TOOL_CALLS]``) render as nothing in the engine's text, so a
call is also read without them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ToolCall:
    """One call: the function's name and its arguments as JSON text (OpenAI's shape)."""

    name: str
    arguments: str
    id: str | None = None  # one the model wrote itself (Mistral's)


@dataclass(frozen=True)
class Parsed:
    """What a model's answer says: its content and its calls.

    Parsed while the answer streams in (``final`` False), ``content`` is the text that can no
    longer turn out to be a call's opening, and ``calls`` the calls already closed; each later
    parse of the longer text extends both.
    """

    content: str
    calls: tuple[ToolCall, ...]
    opened: bool  # a call's opening was seen: the content ends there


@dataclass(frozen=True)
class CallRule:
    """One function as the grammar may call it: its name, and the GBNF rule of its arguments."""

    name: str
    arguments_rule: str


@dataclass(frozen=True)
class Family:
    """One way of writing tool calls."""

    name: str
    # Whether the template renders an assistant's earlier calls with ``arguments`` as an object
    # (``| tojson``); else it concatenates the JSON text OpenAI sends.
    object_arguments: bool
    # Whether the template and the model can make several calls in one answer.
    parallel: bool
    # The index in the answer where the first call opens, or None.
    opening: Callable[[str], int | None]
    # How many characters at the end of a call-less answer may still begin an opening.
    held: Callable[[str], int]
    # The calls in the text from the opening on; closed calls only unless ``final``. ValueError
    # when the text is not calls after all (only asked when ``final``).
    calls: Callable[[str, bool], list[ToolCall]]
    # The GBNF root rule that forces calls of these functions (one, or several when parallel),
    # given the end of the prompt (some families' prompts open the first call themselves).
    grammar: Callable[[Sequence[CallRule], bool, str], str]
    # The content proper, cut from the text before the opening (Functionary 3.2's "all\n").
    content: Callable[[str, bool], str] = lambda text, final: text


def parse(family: Family, text: str, *, final: bool) -> Parsed:
    """``text``, the answer so far (or whole, when ``final``), as content and calls."""
    start = family.opening(text)
    if start is None:
        if final:
            return Parsed(family.content(text, True), (), False)
        kept = text[: len(text) - family.held(text)]
        return Parsed(family.content(kept, False), (), False)
    content = family.content(text[:start], True)
    try:
        calls = family.calls(text[start:], final)
    except ValueError:
        if not final:
            return Parsed(content, (), True)
        # Not calls after all (a text that began like one): the model's words, never dropped.
        return Parsed(family.content(text, True), (), False)
    return Parsed(content, tuple(calls), True)


# ------------------------------------------------------------------ shared pieces

_DECODER = json.JSONDecoder()


def _json_at(text: str, pos: int) -> tuple[object, int] | None:
    """The JSON value starting at ``pos`` (after spaces) and the index after it; None when the
    text there is not (yet) a whole JSON value."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError:
        return None


def _call(obj: object, args_key: str = "arguments") -> ToolCall:
    """``{"name": ..., "arguments": {...}}`` (or the arguments' JSON text) as a call."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("a call must be an object with a string 'name'")
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise ValueError("a call's arguments must be JSON") from None
    if not isinstance(args, dict):
        raise ValueError("a call's arguments must be a JSON object")
    call_id = obj.get("id")
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False), call_id if isinstance(call_id, str) else None)


def _arguments(value: object) -> str:
    if not isinstance(value, dict):
        raise ValueError("a call's arguments must be a JSON object")
    return json.dumps(value, ensure_ascii=False)


def _held_for(markers: Sequence[str]) -> Callable[[str], int]:
    """The longest end of a text that begins one of ``markers``."""

    def held(text: str) -> int:
        best = 0
        for marker in markers:
            for n in range(min(len(marker) - 1, len(text)), best, -1):
                if text.endswith(marker[:n]):
                    best = n
                    break
        return best

    return held


def _find_first(markers: Sequence[str]) -> Callable[[str], int | None]:
    def opening(text: str) -> int | None:
        found = [i for i in (text.find(m) for m in markers) if i >= 0]
        return min(found) if found else None

    return opening


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    return json.dumps(text, ensure_ascii=True)


def _alternatives(calls: Sequence[CallRule], each: Callable[[CallRule], str]) -> str:
    return "( " + " | ".join(each(c) for c in calls) + " )"


def _repeated(one: str, separator: str, parallel: bool) -> str:
    return f"{one} ( {gbnf_literal(separator)} {one} )*" if parallel else one


def _json_object_rule(key: str) -> Callable[[CallRule], str]:
    """``{"name": "NAME", "<key>": ARGS}`` for one function."""

    def each(c: CallRule) -> str:
        head = gbnf_literal('{"name": ' + json.dumps(c.name, ensure_ascii=False) + f', "{key}": ')
        return f'{head} {c.arguments_rule} "}}"'

    return each


# ------------------------------------------------------------------ hermes (Qwen 2.5/3, Hermes 2/3)

_TOOL_CALL, _END_TOOL_CALL = "<tool_call>", "</tool_call>"


def _hermes_calls(text: str, final: bool) -> list[ToolCall]:
    calls: list[ToolCall] = []
    pos = 0
    while True:
        start = text.find(_TOOL_CALL, pos)
        if start < 0:
            if text[pos:].strip() and final and not calls:
                raise ValueError("no call")
            return calls
        got = _json_at(text, start + len(_TOOL_CALL))
        if got is None:
            if final:
                raise ValueError("a call that is not JSON")
            return calls
        obj, end = got
        close = text.find(_END_TOOL_CALL, end)
        if close < 0 and not final:
            return calls  # not closed yet
        calls.append(_call(obj))
        if close < 0:
            return calls  # the answer ended after the JSON (a stop string cut the tag)
        pos = close + len(_END_TOOL_CALL)


HERMES = Family(
    name="hermes",
    object_arguments=True,
    parallel=True,
    opening=_find_first([_TOOL_CALL]),
    held=_held_for([_TOOL_CALL]),
    calls=_hermes_calls,
    grammar=lambda calls, parallel, prompt: _repeated(
        f'"<tool_call>\\n" {_alternatives(calls, _json_object_rule("arguments"))} "\\n</tool_call>"', "\n", parallel
    ),
)


# ------------------------------------------------------------------ mistral (Nemo, Small, ...)

_TOOL_CALLS, _ARGS = "[TOOL_CALLS]", "[ARGS]"


def _mistral_opening(text: str) -> int | None:
    # [TOOL_CALLS] is a control token, which the engine's text renders as nothing: an answer
    # that begins with a list of objects is the calls' list, as after the token.
    stripped = text.lstrip()
    if stripped.startswith("[{"):
        return len(text) - len(stripped)
    i = text.find(_TOOL_CALLS)
    return i if i >= 0 else None


def _mistral_held(text: str) -> int:
    stripped = text.lstrip()
    if stripped in ("", "["):
        return len(text)  # the answer may still open with the calls' list
    return _held_for([_TOOL_CALLS])(text)


def _mistral_list(text: str, pos: int, final: bool) -> tuple[list[ToolCall], int] | None:
    """``[{"name": ..., "arguments": ...}, ...]`` at ``pos``: its calls and the index after it."""
    got = _json_at(text, pos)
    if got is None:
        if final:
            raise ValueError("a call list that is not JSON")
        return None
    items, end = got
    if not isinstance(items, list):
        raise ValueError("[TOOL_CALLS] must be followed by a list")
    return [_call(item) for item in items], end


def _mistral_calls(text: str, final: bool) -> list[ToolCall]:
    calls: list[ToolCall] = []
    pos = 0
    if text.lstrip().startswith("[") and not text.lstrip().startswith(_TOOL_CALLS):  # the list without its (unrendered) [TOOL_CALLS]
        got = _mistral_list(text, 0, final)
        if got is None:
            return calls
        calls, pos = got
    while (start := text.find(_TOOL_CALLS, pos)) >= 0:
        pos = start + len(_TOOL_CALLS)
        if text[pos:].lstrip().startswith("["):  # [TOOL_CALLS][{"name": ..., "arguments": ...}, ...]
            got = _mistral_list(text, pos, final)
            if got is None:
                return calls
            more, pos = got
            calls.extend(more)
        else:  # [TOOL_CALLS]name[ARGS]{...} (Mistral Small 3.2, Devstral, Magistral)
            sep = text.find(_ARGS, pos)
            if sep < 0:
                if final:
                    raise ValueError("[TOOL_CALLS] without [ARGS]")
                return calls
            got_args = _json_at(text, sep + len(_ARGS))
            if got_args is None:
                if final:
                    raise ValueError("arguments that are not JSON")
                return calls
            args, end = got_args
            calls.append(ToolCall(text[pos:sep].strip(), _arguments(args)))
            pos = end
    if final and not calls:
        raise ValueError("no call")
    return calls


MISTRAL = Family(
    name="mistral",
    object_arguments=True,
    parallel=True,
    opening=_mistral_opening,
    held=_mistral_held,
    calls=_mistral_calls,
    grammar=lambda calls, parallel, prompt: (
        '"[TOOL_CALLS][" '
        + _repeated(_alternatives(calls, _json_object_rule("arguments")), ", ", parallel)
        + ' "]"'
    ),
)


# ------------------------------------------------------------------ llama 3.x (JSON calls)

_PYTHON_TAG = "<|python_tag|>"


def _llama3_opening(text: str) -> int | None:
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith(_PYTHON_TAG):
        return len(text) - len(stripped)
    i = text.find(_PYTHON_TAG)
    return i if i >= 0 else None


def _llama3_held(text: str) -> int:
    if not text.strip():
        return len(text)  # the answer may still open with a call
    return _held_for([_PYTHON_TAG])(text)


def _llama3_calls(text: str, final: bool) -> list[ToolCall]:
    """Calls as JSON objects, ``;`` or spaces between them, maybe after <|python_tag|>."""
    pos = 0
    if text.lstrip().startswith(_PYTHON_TAG):
        pos = text.find(_PYTHON_TAG) + len(_PYTHON_TAG)
    calls: list[ToolCall] = []
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] == ";"):
            pos += 1
        if pos >= len(text):
            break
        got = _json_at(text, pos)
        if got is None:
            if final:
                raise ValueError("a call that is not JSON")
            break
        obj, pos = got
        calls.append(_call(obj, "parameters"))
    if final and not calls:
        raise ValueError("no call")
    return calls


LLAMA3 = Family(
    name="llama3",
    object_arguments=True,
    parallel=False,  # Meta's templates refuse more than one call per message
    opening=_llama3_opening,
    held=_llama3_held,
    calls=_llama3_calls,
    grammar=lambda calls, parallel, prompt: _repeated(_alternatives(calls, _json_object_rule("parameters")), "; ", parallel),
)


# ------------------------------------------------------------------ functionary v3.1 (Llama 3.1)

_FUNCTION_OPEN = "<function="
_FUNCTION_CALL = re.compile(r"<function=([^>]+)>")


def _functionary31_calls(text: str, final: bool) -> list[ToolCall]:
    calls: list[ToolCall] = []
    pos = 0
    while (m := _FUNCTION_CALL.search(text, pos)) is not None:
        got = _json_at(text, m.end())
        if got is None:
            if final:
                raise ValueError("arguments that are not JSON")
            return calls
        args, end = got
        close = text.find("</function>", end)
        if close < 0 and not final:
            return calls
        calls.append(ToolCall(m.group(1), _arguments(args)))
        pos = end if close < 0 else close + len("</function>")
    tag = text.find(_PYTHON_TAG, pos)
    if tag >= 0 and final:  # raw code for the built-in python tool
        calls.append(ToolCall("python", json.dumps({"code": text[tag + len(_PYTHON_TAG):]}, ensure_ascii=False)))
    if final and not calls:
        raise ValueError("no call")
    return calls


FUNCTIONARY_V3_1 = Family(
    name="functionary-v3.1",
    object_arguments=False,
    parallel=False,  # its template says "Only call one function at a time"
    opening=_find_first([_FUNCTION_OPEN, _PYTHON_TAG]),
    held=_held_for([_FUNCTION_OPEN, _PYTHON_TAG]),
    calls=_functionary31_calls,
    grammar=lambda calls, parallel, prompt: _repeated(
        _alternatives(calls, lambda c: f"{gbnf_literal('<function=' + c.name + '>')} {c.arguments_rule} \"</function>\""), "", parallel
    ),
)


# ------------------------------------------------------------------ functionary v3.2
#
# The generation prompt ends in ">>>"; the model goes on with a recipient and a newline:
# "all\n" then text for the user, or a function's name then its arguments. Later messages to
# other recipients each start with ">>>" again.

_RECIPIENT = ">>>"
_ALL = "all\n"


def _lead(text: str) -> int:
    """Where the first recipient's name starts: after a ">>>" the prompt did not end with."""
    return len(_RECIPIENT) if text.startswith(_RECIPIENT) else 0


def _undecided(text: str) -> bool:
    """Whether the answer may still turn out to begin with ">>>all\n" or "all\n"."""
    return any(lead.startswith(text) and len(text) < len(lead) for lead in (_ALL, _RECIPIENT + _ALL))


def _functionary32_opening(text: str) -> int | None:
    if _undecided(text):
        return None
    lead = _lead(text)
    if not text.startswith(_ALL, lead):
        return 0  # the first recipient is a function
    i = text.find(_RECIPIENT, lead + len(_ALL))
    return i if i >= 0 else None


def _functionary32_held(text: str) -> int:
    if _undecided(text):
        return len(text)
    return _held_for([_RECIPIENT])(text)


def _functionary32_content(text: str, final: bool) -> str:
    lead = _lead(text)
    if text.startswith(_ALL, lead):
        return text[lead + len(_ALL):]
    return text if final else ""  # final: words that were not a call after all


def _functionary32_calls(text: str, final: bool) -> list[ToolCall]:
    if not text.startswith(_RECIPIENT):
        text = _RECIPIENT + text
    calls: list[ToolCall] = []
    pos = 0
    while text.startswith(_RECIPIENT, pos):
        newline = text.find("\n", pos)
        if newline < 0:
            if final:
                raise ValueError("a recipient without a message")
            return calls
        name = text[pos + len(_RECIPIENT):newline].strip()
        body_start = newline + 1
        if name == "all":  # more text for the user after calls: not content (the calls opened)
            nxt = text.find(_RECIPIENT, body_start)
            if nxt < 0:
                break
            pos = nxt
            continue
        if name == "python" and not text[body_start:].lstrip().startswith("{"):
            nxt = text.find(_RECIPIENT, body_start)
            if nxt < 0 and not final:
                return calls
            code = text[body_start:] if nxt < 0 else text[body_start:nxt]
            calls.append(ToolCall("python", json.dumps({"code": code}, ensure_ascii=False)))
            if nxt < 0:
                break
            pos = nxt
            continue
        got = _json_at(text, body_start)
        if got is None:
            if final:
                raise ValueError("arguments that are not JSON")
            return calls
        args, end = got
        calls.append(ToolCall(name, _arguments(args)))
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    if final and not calls:
        raise ValueError("no call")
    return calls


def _functionary32_grammar(calls: Sequence[CallRule], parallel: bool, prompt: str) -> str:
    def each(c: CallRule) -> str:
        return f"{gbnf_literal(c.name + chr(10))} {c.arguments_rule}"

    one = _alternatives(calls, each)
    first = one if prompt.endswith(_RECIPIENT) else f'">>>" {one}'
    return f'{first} ( ">>>" {one} )*' if parallel else first


FUNCTIONARY_V3_2 = Family(
    name="functionary-v3.2",
    object_arguments=False,
    parallel=True,
    opening=_functionary32_opening,
    held=_functionary32_held,
    calls=_functionary32_calls,
    grammar=_functionary32_grammar,
    content=_functionary32_content,
)


# ------------------------------------------------------------------ the table

# (family, the texts a template must hold to be of it), asked in this order.
FAMILIES: tuple[tuple[Family, tuple[str, ...]], ...] = (
    (FUNCTIONARY_V3_2, (">>>all",)),
    (FUNCTIONARY_V3_1, ("<function=",)),
    (HERMES, ("<tool_call>",)),
    (MISTRAL, ("[TOOL_CALLS]",)),
    (LLAMA3, ("<|start_header_id|>", "tools")),
)


def family_of(template: str) -> Family | None:
    """The family whose calls a chat template's model writes; None when the template renders no
    tools in a way the gateway knows."""
    for family, marks in FAMILIES:
        if all(mark in template for mark in marks):
            return family
    return None
