"""Stopping once the call is complete: the per-token machines on crafted streams, and the cut text's verdict
against the whole text's. The decoder ending rows where the machine says: tests/test_call_end_decoding.py."""

from __future__ import annotations

import json
import random

import pytest

from agent_align.call_end import call_end
from agent_align.validation.extract import _ACTION_FENCE
from agent_align.validation.validator import validate_output


def chunkings(text: str, seed: int = 0):
    """The text fed whole, a character at a time, and in random token-sized pieces."""
    yield [text]
    yield list(text)
    rng = random.Random(seed)
    for _ in range(3):
        pieces, i = [], 0
        while i < len(text):
            j = i + rng.randint(1, 6)
            pieces.append(text[i:j])
            i = j
        yield pieces


def cut(fmt: str, pieces: list[str], before: str = "", fail_fast: str | None = None) -> str | None:
    """The text up to and including the piece the machine stops on, or None when it never stops."""
    m = call_end(fmt, before, fail_fast)
    seen = ""
    for p in pieces:
        seen += p
        if m is not None and m.feed(p):
            return seen
    return None


def through_piece(pieces: list[str], expected: str | None) -> str | None:
    """A row stops on the token that holds the stopping character, with all of that token."""
    if expected is None:
        return None
    seen = ""
    for p in pieces:
        seen += p
        if len(seen) >= len(expected):
            return seen


JSON_CASES = [  # (text, where the row stops: the text up to the stopping character, or None)
    ('{"tool": "f", "parameters": {"s": "a}b"}}', None),  # complete, then end of turn: nothing to cut
    ('{"a": "}"}\nextra text', '{"a": "}"}\ne'),
    ('{"a": "x\\"}"}  tail', '{"a": "x\\"}"}  t'),  # an escaped quote does not end the string
    ('{"a": "\\\\"} x', '{"a": "\\\\"} x'),  # an escaped backslash does not escape the quote
    ('{"a": {"b": [1, {"c": "]"}]}, "d": 3}x', '{"a": {"b": [1, {"c": "]"}]}, "d": 3}x'),
    ('[{"tool": "f"}, {"tool": "g"}] and more', '[{"tool": "f"}, {"tool": "g"}] a'),
    ('  \n {"a": 1} \u3000\n', None),  # whitespace either side, as the validator strips it
    ('```json\n{"a": "```"}\n```\nThis calls f', '```json\n{"a": "```"}\n```\nT'),
    ('```\n[{"a": 1}]```!', '```\n[{"a": 1}]```!'),
    ('```json\n{"a": 1} oops\n```', None),  # text between the value and the fence
    ('```json x\n{"a": 1}\n```\nmore', None),  # not a whole-answer fence as extract.py reads one
    ('Sure: {"a": 1} done', None),  # prose first
    ('{"a": [1}, "b": 2} more', None),  # mismatched brackets
    ('"just a string" more', None),
    ("[f(a='x]'), g(b=\"y\")] and then", "[f(a='x]'), g(b=\"y\")] a"),  # BFCL's Python call syntax
    ("[f(a='it\\'s ]')]\n", None),
]

REACT_CASES = [
    ('Thought: use f.\nAction:\n```json\n{"tool": "f"}\n```\nObservation: 4', 'Thought: use f.\nAction:\n```json\n{"tool": "f"}\n```'),
    ('Action: later. Action:\n```json\n{"a": "``"}```x', 'Action: later. Action:\n```json\n{"a": "``"}```'),
    ('Action: ```Action:\n```json\n{}\n```', 'Action: ```Action:\n```json\n{}\n```'),  # the regex retries inside the failed lang
    ('AAction:```py \t\n{}```', 'AAction:```py \t\n{}```'),
    ('Action:```json x\n{}```', None),
    ('Thought: no action\n```json\n{}\n```', None),
    ('Action: ````json\n{}```', None),
]


@pytest.mark.parametrize("text,expected", JSON_CASES)
def test_json_call_end_on_crafted_streams(text, expected):
    for pieces in chunkings(text):
        assert cut("json", pieces) == through_piece(pieces, expected)


FAIL_FAST_CASES = [  # strict SSPR (stage=evaluate): an answer that can only fail stops on its first character
    ("The call is {}", "T"),
    (" \n Sure: {\"a\": 1}", " \n S"),
    ("\u3000<tool>", "\u3000<"),  # a space the validator strips, then no JSON
    ("Infinity", None), ("NaN", None), ("null", None), ("true or", None), ("42 things", None),  # JSON may follow
    ('-1', None), ('"text"', None),
    ("\ufffd\ufffd", None),  # the bytes of a character not yet decoded: maybe a space
    ("```json\nThe call", None),  # inside a fence: left to end of turn, as without fail_fast
    ('{"a": 1}\nThe end', '{"a": 1}\nT'),
]


@pytest.mark.parametrize("text,expected", FAIL_FAST_CASES)
def test_fail_fast_stops_answers_that_can_only_fail(text, expected):
    for pieces in chunkings(text):
        assert cut("json", pieces, fail_fast="json") == through_piece(pieces, expected)
    assert cut("react", list("The answer"), fail_fast="json") is None  # a later Action: block can still come
    assert cut("json", list("The answer"), before="x", fail_fast="json") is None  # a prefix: the old rule


@pytest.mark.parametrize("text,expected", REACT_CASES)
def test_react_call_end_on_crafted_streams(text, expected):
    m = _ACTION_FENCE.search(text)
    assert (text[:m.end()] if m else None) == expected  # the case means what it says
    for pieces in chunkings(text):
        assert cut("react", pieces) == through_piece(pieces, expected)


def test_react_machine_finds_what_the_extractor_regex_finds():
    """Random near-misses of an Action block: the machine stops on the character that completes the first
    ``_ACTION_FENCE`` match, never earlier, and never stops where the regex finds nothing."""
    rng = random.Random(0)
    parts = ["Thought: x. ", "Action:", rng.choice([" ", "\n", ""]), "```", "json", " ", "\n", '{"a": "`"}', "\n", "```", "\nmore"]
    noise = ["Action:", "A", ":", " ", "\t", "\n", "`", "``", "x", "-", "json"]
    stops = misses = 0
    for _ in range(3000):
        text = list(parts)
        for _ in range(rng.randint(0, 3)):  # drop, duplicate or insert pieces
            k = rng.randrange(len(text))
            op = rng.random()
            if op < 0.35:
                del text[k]
            elif op < 0.6:
                text.insert(k, text[k])
            else:
                text.insert(k, rng.choice(noise))
        text = "".join(text)
        got = cut("react", list(text))
        ends = [k for k in range(1, len(text) + 1) if _ACTION_FENCE.search(text[:k])]
        assert got == (text[:ends[0]] if ends else None), text
        stops += got is not None
        misses += got is None
    assert stops > 1000 and misses > 300


SINGLE = {"type": "object", "required": ["tool", "parameters"], "additionalProperties": False, "properties": {
    "tool": {"const": "f"},
    "parameters": {"type": "object", "required": ["s"], "properties": {"s": {"type": "string"}, "n": {"type": "integer"}},
                   "additionalProperties": False}}}
PARALLEL = {"type": "array", "minItems": 2, "maxItems": 2, "items": {"anyOf": [SINGLE]},
            "allOf": [{"contains": SINGLE, "minContains": 2, "maxContains": 2}]}


def _random_answer(rng: random.Random) -> str:
    s = rng.choice(["plain", "with } brace", 'quote " inside', "back\\slash", "[", "```", '\\"}'])
    call = {"tool": rng.choice(["f", "f", "g"]), "parameters": {"s": s}}
    if rng.random() < 0.3:
        call["parameters"]["n"] = rng.choice([1, "2", 3.5])
    body = json.dumps(call) if rng.random() < 0.8 else json.dumps([call, call])
    if rng.random() < 0.2:
        body = body[:-1] + "}" + body[-1]  # unbalanced
    if rng.random() < 0.25:
        body = f"```{rng.choice(['json', '', 'json '])}\n{body}\n```"
    lead = rng.choice(["", "", " \n", "Sure: ", "I ", "true ", "7", "\u3000", "The "])
    tail = rng.choice(["", "", "\n", "  \n\n", "\nThis calls f.", " {}", "}", "\n```", ", ok", "\u3000"])
    return lead + body + tail


@pytest.mark.parametrize("fail_fast", [None, "json"])
def test_cut_answers_get_the_verdict_of_the_whole_answer(fail_fast):
    """For single and parallel-call schemas, and answers that end cleanly, ramble, repeat, carry braces and
    escapes in strings, are fenced or unbalanced, or start in prose: the cut text passes or fails, in the same
    category, as the whole text. The message is the same too, except for a fenced answer followed by more
    text: the whole text's message depends on whether it ends in another fence, which the cut cannot know."""
    rng = random.Random(1)
    stopped = passed = prose = 0
    for i in range(1500):
        text = _random_answer(rng)
        for pieces in list(chunkings(text, seed=i))[1:3]:
            got = cut("json", pieces, fail_fast=fail_fast)
            for schema in (SINGLE, PARALLEL):
                whole = validate_output(text, schema, "json")
                part = validate_output(got if got is not None else text, schema, "json")
                assert (part.passed, part.category) == (whole.passed, whole.category), (text, got)
                if not text.lstrip().startswith("`"):
                    assert part.detail == whole.detail, (text, got)
                passed += whole.passed
            stopped += got is not None and got != text
            prose += got is not None and len(got.strip()) == 1
    assert stopped > 300 and passed > 300  # both kinds were exercised
    assert (prose > 300) == bool(fail_fast)  # fail_fast stopped the answers that start in prose, and only it


def test_bfcl_answers_parse_to_the_same_calls_when_cut():
    """stage=evaluate data=bfcl reads JSON or Python call syntax (bfcl/parse.py); cutting changes neither."""
    from agent_align.bfcl.parse import parse_calls

    answers = ['[f(a=1, b="x]"), g(c=[1, 2])]', "[f(s='}{'), g(t='it\\'s')]", '[{"name": "f", "arguments": {"a": "]"}}]',
               '{"tool": "f", "parameters": {"a": 1}}', "f(a=1)\ng(b=2)", '[f(a={"k": [1]})]']
    cuts = 0
    for answer in answers:
        for tail in ("", "\n", "\nThese calls do it.", " [x]"):
            text = answer + tail
            got = cut("json", list(text))
            assert parse_calls(got if got is not None else text)[0] == parse_calls(text)[0], text
            cuts += got is not None
    assert cuts >= 10 and parse_calls(answers[1])[0] == [("f", {"s": "}{"}), ("g", {"t": "it's"})]


BFCL_FAIL_FAST_CASES = [  # stage=evaluate data=bfcl: JSON or Python calls; prose that can decode to none stops
    ("The function to call", "The f"),
    ("Sure, here it is", "Sure,"),
    ("  get_weather\n[get_weather(city='x')]", "  get_weather\n"),  # a bare name is a statement, not a call
    ("1. Call f(a=1)", "1"), ('"f(a=1)"', '"'), ("<tool_call>", "<"), ("\u3000Hello there", "\u3000Hello t"),
    ("math . factorial (number=5)", None), ("math.\tfactorial(number=5) extra", None),  # Python allows the spaces
    ("math.factorial number", "math.factorial n"), ("math..f(a=1)", "math.."), ("math.1", "math.1"),
    ("f\u00e9(x=1)", None), ("true(a=1)", None),  # identifiers as Python reads them
    ("(f)(a=1)", None), ("# a comment\nf(a=1)", None), ("f \\\n(a=1)", None),  # a target in parentheses, a
    ("f\ufffd", None), ("\ufffd", None),  # comment, a line continuation, a character not yet decoded: undecided
    ("[f(a=1)] and more", "[f(a=1)] a"), ('{"name": "f", "arguments": {}} ok', '{"name": "f", "arguments": {}} o'),
    ("```python\nThe call", None),  # inside a fence: left to end of turn
]


@pytest.mark.parametrize("text,expected", BFCL_FAIL_FAST_CASES)
def test_bfcl_fail_fast_stops_answers_that_decode_to_no_call(text, expected):
    from agent_align.bfcl.parse import parse_calls

    for pieces in chunkings(text):
        assert cut("json", pieces, fail_fast="bfcl") == through_piece(pieces, expected)
    if expected is not None and not expected.rstrip().endswith(("]", "}", ")")):  # stopped in the prose
        assert parse_calls(text)[0] is None and parse_calls(expected)[0] is None
    with pytest.raises(ValueError, match="fail_fast='xml'; valid: None, 'json', 'bfcl'"):
        call_end("json", fail_fast="xml")


def _random_bfcl_answer(rng: random.Random) -> str:
    call = rng.choice(["f(a=1)", "math.factorial(number=5)", "m . g (s='x]')", "get_weather(city=\"Oslo\")"])
    body = rng.choice([call, f"[{call}, {call}]", f"{call}\n{call}", '{"name": "f", "arguments": {"a": 1}}'])
    lead = rng.choice(["", "", "", "", "", "", " \n", "Sure, ", "The ", "I will call ", "1. ", "f ", "f.", "x = ", "print ", "(",
                       "# c\n", "\ufeff", "lambda: ", "not ", "- ", "get_weather\n", "\u00e9t\u00e9 ", "\u3000"])
    tail = rng.choice(["", "", "\n", " done", "\nThese calls answer it.", ")", "\n```"])
    return lead + body + tail


def test_bfcl_fail_fast_cuts_only_answers_that_decode_to_no_call():
    """Random answers in both syntaxes, led by prose, names, keywords, comments and odd characters: wherever
    fail_fast="bfcl" cuts before the call is complete, neither the cut text nor the whole one decodes to calls,
    so both score the same (decoder_failed / json_error; an irrelevance question's pass); where it cuts after a
    complete call, both decode to the same calls."""
    from agent_align.bfcl.parse import parse_calls

    rng = random.Random(3)
    prose_cuts = valid = 0
    for i in range(1500):
        text = _random_bfcl_answer(rng)
        whole = parse_calls(text)[0]
        valid += whole is not None
        for pieces in list(chunkings(text, seed=i))[1:3]:
            got = cut("json", pieces, fail_fast="bfcl")
            part = parse_calls(got if got is not None else text)[0]
            assert part == whole, (text, got)
            prose_cuts += got is not None and whole is None and len(got) < len(text)
    assert prose_cuts > 500 and valid > 150  # both kinds were exercised


def test_a_prefix_that_holds_the_call_turns_the_machine_off():
    assert call_end("json", '{"a": 1}') is None and call_end("react", "Action:\n```json\n{}\n```") is None
    assert cut("json", list('1, "b": 2}\nmore'), before='{"a": ') == '1, "b": 2}\nm'
    with pytest.raises(ValueError, match="valid: json, react"):
        call_end("yaml")
