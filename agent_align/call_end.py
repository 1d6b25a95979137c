"""Where a model's answer holds a complete call, found token by token, so decoding can stop there.

    ends = CALL_ENDS["json"]()
    ends.feed('{"name": "f", "arguments": {"s": "}"}}')  # False: the object closed, but nothing is past it yet
    ends.feed("\\n\\n")                                    # False: whitespace, the validator strips it
    ends.feed("Note")                                      # True: stop here, this token kept

A decoder feeds each row the decoded text of its new token (``feed``); ``True`` means the row can end
with that token. The cut text gets the verdict the whole text would get from ``validation.extract``:

- ``json``: the answer's first non-space character opens a top-level object or array (or a whole-answer
  ```` ```lang ```` fence whose content does), and brackets balance outside strings (``\\"`` escapes
  followed; also '-quoted ones, for BFCL's Python call syntax ``[f(a='x]')]``, which stage=evaluate
  data=bfcl parses when JSON fails). The row stops at the first non-space character *after* the call (after the closing fence
  when fenced), not at the closing brace: an answer that ends there (then ``<|im_end|>``) never reaches
  it, so its text is unchanged, and one that goes on keeps the token that makes ``json.loads`` fail
  ("Extra data") exactly as the whole text would. That costs one token per rambling row.
- ``react``: ``extract_text`` takes the first ```` Action: ```lang ```` fence and ignores what follows, so
  the row stops on the closing fence: this machine follows ``_ACTION_FENCE``'s leftmost match exactly.

Anything else (prose first, a mismatched bracket, text between the value and its closing fence) turns
the machine off and the row runs to end of turn as before: stopping early is only ever done where the
verdict cannot change. ``fail_fast`` also stops a ``json`` row whose verdict is already a failure whatever follows:

- ``"json"`` (stage=evaluate's strict SSPR, where the whole answer must be the JSON value): the first
  non-space character can start no JSON value. ``json.loads`` then fails at character 0 with "Expecting
  value" whatever follows, so the verdict and its message are those of the whole answer.
- ``"bfcl"`` (stage=evaluate data=bfcl, ``bfcl.parse.parse_calls``: JSON, or Python call syntax whose
  statements are all calls ``a.b(k=v)``): the answer cannot start a JSON container or such a call. A call's
  target is a dotted name, so the answer must start with ``{``, ``[`` or a name, and a name (dotted, spaces
  and tabs allowed around the dots) must be followed by ``(``. ``The function ...``, ``Sure, ...`` and
  ``1. ...`` stop on the token that shows it (``The f``, ``Sure,``, ``1``); ``(``, ``#``, ``\\`` and a
  name followed by ``(`` leave the row to end of turn, as without ``fail_fast``. Every continuation of the
  cut text fails to decode as the whole text does, so the verdict and its category (``decoder_failed``,
  ``json_error``; an irrelevance question's pass) are the whole answer's; the decoder's message can differ.

The base model's prose answers stop after a token instead of running to the token limit. Not for samples
that become training pairs, whose rejected text should be what the model would write.

Written by hand: incremental JSON parsers (ijson, json-stream) neither skip a fence nor find the react
block, and a 4-state character loop costs microseconds per token.
"""

from __future__ import annotations

LANG = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")  # [A-Za-z0-9_-] in extract.py
OPEN = {"}": "{", "]": "["}
# first characters after which the JSON verdict is still open: values, NaN/Infinity (loads_strict rejects
# them with their own message), a fence, and U+FFFD (part of a multi-byte character, maybe a space)
UNDECIDED = frozenset('{["-0123456789tfnNI`\ufffd')
# states
LEAD, FENCE, FENCE_LANG, FENCE_SPACE, FENCED_LEAD, VALUE, CLOSING_FENCE, TRAIL, OFF, STOP = range(10)
SEEK, AFTER_ACTION, TICKS, BODY = range(10, 14)
NAME, AFTER_NAME, DOT = range(14, 17)  # fail_fast="bfcl": reading the dotted name a Python call starts with
PY_SPACE = frozenset(" \t\f")  # whitespace inside a Python line
PY_UNDECIDED = frozenset("(#\\\ufffd")  # a parenthesised target, a comment, a line continuation, a split character
FAIL_FAST = (None, "json", "bfcl")


class JsonCallEnd:
    """``data.format=json``: a top-level JSON object or array (a call, or a list of parallel calls)."""

    __slots__ = ("state", "stack", "in_str", "esc", "ticks", "fenced", "fail_fast")

    def __init__(self, fail_fast: str | None = None):
        self.state, self.stack, self.in_str, self.esc, self.ticks, self.fenced = LEAD, [], "", False, 0, False
        self.fail_fast = fail_fast

    @property
    def done(self) -> bool:
        return self.state == STOP

    @property
    def off(self) -> bool:
        return self.state == OFF

    def feed(self, text: str) -> bool:
        st = self.state
        if st == OFF or st == STOP:
            return st == STOP
        stack = self.stack
        for c in text:
            if st == VALUE:
                if self.in_str:
                    if self.esc:
                        self.esc = False
                    elif c == "\\":
                        self.esc = True
                    elif c == self.in_str:
                        self.in_str = ""
                elif c == '"' or c == "'":  # ' : BFCL's Python call syntax, [f(a='x]')]; never valid JSON
                    self.in_str = c
                elif c == "{" or c == "[":
                    stack.append(c)
                elif c == "}" or c == "]":
                    if stack.pop() != OPEN[c]:
                        st = OFF  # invalid JSON either way; leave it to end of turn
                        break
                    if not stack:
                        st, self.ticks = (CLOSING_FENCE if self.fenced else TRAIL), 0
            elif st == TRAIL:
                if not c.isspace() and c != "\ufffd":  # U+FFFD: part of a multi-byte character, maybe a space
                    st = STOP
                    break
            elif st == LEAD or st == FENCED_LEAD:
                if c.isspace():
                    continue
                if c == "{" or c == "[":
                    stack.append(c)
                    st = VALUE
                elif c == "`" and st == LEAD:
                    st, self.ticks, self.fenced = FENCE, 1, True
                elif st == LEAD and self.fail_fast == "bfcl":
                    if c.isidentifier():
                        st = NAME
                        continue
                    st = OFF if c in PY_UNDECIDED else STOP
                    break
                else:
                    st = STOP if self.fail_fast == "json" and st == LEAD and c not in UNDECIDED else OFF
                    break
            elif st == NAME or st == AFTER_NAME or st == DOT:  # fail_fast="bfcl" only
                if st == NAME and ("a" + c).isidentifier():
                    continue
                if c in PY_SPACE:
                    st = DOT if st == DOT else AFTER_NAME
                elif st == DOT:
                    if not c.isidentifier():
                        st = OFF if c in PY_UNDECIDED else STOP
                        break
                    st = NAME
                elif c == ".":
                    st = DOT
                else:  # "(" : a call, left to end of turn; anything else ends the statement without one
                    st = OFF if c in PY_UNDECIDED else STOP
                    break
            elif st == FENCE:
                if c != "`":
                    st = OFF
                    break
                self.ticks += 1
                if self.ticks == 3:
                    st = FENCE_LANG
            elif st == FENCE_LANG or st == FENCE_SPACE:
                if c == "\n":
                    st = FENCED_LEAD
                elif c == " " or c == "\t":
                    st = FENCE_SPACE
                elif not (st == FENCE_LANG and c in LANG):
                    st = OFF
                    break
            elif st == CLOSING_FENCE:
                if c == "`":
                    self.ticks += 1
                    if self.ticks == 3:
                        st = TRAIL
                elif self.ticks or not c.isspace():
                    st = OFF
                    break
        self.state = st
        return st == STOP


class ReactCallEnd:
    """``data.format=react``: the first ```` Action: ```json ... ``` ```` block, as ``_ACTION_FENCE`` finds it."""

    __slots__ = ("state", "k", "ticks", "pending")
    WORD = "Action:"

    def __init__(self, fail_fast: str | None = None):  # never fails early: a later 'Action:' can still open a block
        self.state, self.k, self.ticks, self.pending = SEEK, 0, 0, []

    @property
    def done(self) -> bool:
        return self.state == STOP

    @property
    def off(self) -> bool:
        return False  # a later 'Action:' can still open a block

    def feed(self, text: str) -> bool:
        if self.state == STOP:
            return True
        for c in text:
            if self._step(c):
                self.state = STOP
                return True
        return False

    def _step(self, c: str) -> bool:
        st = self.state
        if st == BODY:  # (.*?)``` : the first three backticks in a row close it
            self.ticks = self.ticks + 1 if c == "`" else 0
            return self.ticks == 3
        if st == SEEK:  # "Action:" has no proper border, so a mismatch restarts at 'A' or nothing
            if c == self.WORD[self.k]:
                self.k += 1
                if self.k == len(self.WORD):
                    self.state, self.pending, self.ticks = AFTER_ACTION, list(self.WORD), 0
            else:
                self.k = 1 if c == "A" else 0
            return False
        self.pending.append(c)
        ok = True
        if st == AFTER_ACTION:  # \s*```
            if c == "`":
                self.state, self.ticks = TICKS, 1
            else:
                ok = c.isspace()
        elif st == TICKS:
            ok = c == "`"
            self.ticks += 1
            if ok and self.ticks == 3:
                self.state = FENCE_LANG
        else:  # [A-Za-z0-9_-]*[ \t]*\n
            if c == "\n":
                self.state, self.ticks, self.pending = BODY, 0, []
            elif c == " " or c == "\t":
                self.state = FENCE_SPACE
            else:
                ok = st == FENCE_LANG and c in LANG
        if not ok:  # this 'Action:' opens no block: the regex search resumes one character after its 'A'
            replay = self.pending[1:]
            self.state, self.k, self.pending = SEEK, 0, []
            return any(self._step(ch) for ch in replay)
        return False


CALL_ENDS = {"json": JsonCallEnd, "react": ReactCallEnd}


def call_end(fmt: str, before: str = "", fail_fast: str | None = None):
    """A fresh machine for output format ``fmt``, already fed ``before`` (text the answer continues, e.g. a
    Step-DPO prefix). None when ``before`` already holds a complete call: what follows it cannot change
    the verdict, so stopping there would only cut the continuation that was asked for. ``fail_fast``: also
    stop an answer whose verdict is already a failure: "json" (strict SSPR) or "bfcl" (module docstring)."""
    if fmt not in CALL_ENDS:
        raise ValueError(f"no call-end detector for output format {fmt!r}; valid: {', '.join(CALL_ENDS)}")
    if fail_fast not in FAIL_FAST:
        raise ValueError(f"fail_fast={fail_fast!r}; valid: {', '.join(map(repr, FAIL_FAST))}")
    machine = CALL_ENDS[fmt](None if before else fail_fast)
    if before:
        machine.feed(before)
        if machine.done or (fmt == "json" and machine.state == TRAIL):
            return None
    return machine
