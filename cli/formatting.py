"""Docker's output conventions: go-units sizes and durations, tabwriter tables, --format.

`render` covers docker/cli's formatter: the default table, `table TEMPLATE` (with its header
row), `json`, and any other Go template applied per row without a header. Every --format
and `inspect -f` goes through the one Go-template engine below (`parse_template`), so a
template Go would refuse is refused everywhere, with Go's own words.
"""

from __future__ import annotations

import json
import re
from typing import TextIO

from hv.errors import UsageError
from hv.timefmt import human_duration  # noqa: F401 - the CLI's views import it from here

_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
# tabwriter.NewWriter(out, 10, 1, 3, ' ', 0) in docker/cli's formatter
_MINWIDTH, _PADDING = 10, 3
_HEADERS = {
    "ID": "ID",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED",
}


def human_size(n: float) -> str:
    """go-units HumanSizeWithPrecision(n, 3): '4.26MB', '512B', '1.2GB'."""
    size = float(n)
    i = 0
    while size >= 1000 and i < len(_DECIMAL_UNITS) - 1:
        size /= 1000
        i += 1
    return f"{size:.3g}{_DECIMAL_UNITS[i]}"


def go_json(value) -> str:
    """json.Marshal's output: compact, sorted keys for maps, <>& escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def header_for(key: str) -> str:
    """Docker's column header for a field name: 'CreatedAt' -> 'CREATED AT'."""
    return _HEADERS.get(key) or re.sub(r"(?<=[a-z])(?=[A-Z])", " ", key).upper()


def _unescape(fmt: str) -> str:
    return fmt.replace("\\t", "\t").replace("\\n", "\n")


# --- Go templates ----------------------------------------------------------------------------
#
# One engine for every --format/-f: a lexer and parser that follow Go's text/template/parse
# (the same items and the same error texts: "unclosed action", "unexpected EOF",
# `function "x" not defined`, ...) and an evaluator for what Docker's templates use: fields
# and chains, variables, if / else if / with / range (`$i, $v :=`, break, continue),
# parenthesized pipelines, docker/cli's functions (json split join title lower upper pad
# truncate) and Go's built-ins (and or not len index slice print printf println eq ne lt le
# gt ge html urlquery). `define`, `template` and `block` are refused with a clear message.

_FUNCS = frozenset(("json", "split", "join", "title", "lower", "upper", "pad", "truncate",
                    "print", "printf", "println", "and", "or", "not", "len", "index", "slice",
                    "eq", "ne", "lt", "le", "gt", "ge", "html", "urlquery", "js", "call"))
# docker/cli's templates.HeaderFunctions: a table's header row passes the header through
_HEADER_FUNCS = frozenset(("json", "split", "join", "title", "lower", "upper", "pad",
                           "truncate"))
_KEYWORDS = frozenset(("break", "continue", "block", "define", "else", "end", "if", "range",
                       "nil", "template", "with"))
_SPACE = " \t\r\n"
_NUMBER = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F_]*|[0-9_]*)(?:\.[0-9_]*)?(?:[eE][+-]?[0-9_]+)?i?")
_MISSING = object()  # no value piped in / no such value (Go's missingVal)


class TemplateError(UsageError):
    """A --format/-f template that Go would not parse, or whose execution failed."""

    hint = "check the template's {{ }} actions: e.g. --format '{{.ID}}' or '{{json .}}'"


class _Item:
    __slots__ = ("kind", "pos", "val", "line")

    def __init__(self, kind: str, pos: int, val: str, line: int):
        self.kind, self.pos, self.val, self.line = kind, pos, val, line

    def __str__(self) -> str:  # Go's item.String()
        if self.kind == "EOF":
            return "EOF"
        if self.kind == "ERROR":
            return self.val
        if self.kind in _KEYWORDS or self.kind == "DOT":
            return f"<{self.val}>"
        if len(self.val) > 10:
            return _go_quote(self.val[:10]) + "..."
        return _go_quote(self.val)


def _go_quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _rune(ch: str) -> str:  # Go's %#U
    return f"U+{ord(ch):04X} '{ch}'"


def _alnum(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


def _lex(text: str) -> list[_Item]:
    """Go's lexer run to the end of `text`: its items, the last one EOF or ERROR."""
    items: list[_Item] = []
    n = len(text)

    def add(kind: str, a: int, b: int) -> None:
        items.append(_Item(kind, a, text[a:b], 1 + text.count("\n", 0, a)))

    def fail(message: str, at: int) -> list[_Item]:
        items.append(_Item("ERROR", at, message, 1 + text.count("\n", 0, at)))
        return items

    def right_delim(p: int) -> tuple[bool, bool]:
        """(a right delimiter at p, with a trim marker " -}}")."""
        if text.startswith("-}}", p + 1) and p < n and text[p] in _SPACE:
            return True, True
        return text.startswith("}}", p), False

    def at_terminator(p: int) -> bool:
        return p >= n or text[p] in _SPACE or text[p] in ".,|:)(}"

    pos = start = 0
    while True:
        left = text.find("{{", pos)
        if left < 0:
            if n > start:
                add("TEXT", start, n)
            items.append(_Item("EOF", n, "", 1 + text.count("\n")))
            return items
        after = left + 2
        trim = after + 1 < n and text[after] == "-" and text[after + 1] in _SPACE
        end_text = left
        if trim:
            while end_text > start and text[end_text - 1] in _SPACE:
                end_text -= 1
        if end_text > start:
            add("TEXT", start, end_text)
        pos = after + (2 if trim else 0)
        if text.startswith("/*", pos):  # a comment
            close = text.find("*/", pos + 2)
            if close < 0:
                return fail("unclosed comment", pos)
            pos = close + 2
            delim, trim_right = right_delim(pos)
            if not delim:
                return fail("comment ends before closing delimiter", pos)
            pos += 4 if trim_right else 2
            while trim_right and pos < n and text[pos] in _SPACE:
                pos += 1
            start = pos
            continue
        add("LEFT", left, after)
        paren = 0
        while True:  # inside the action
            delim, trim_right = right_delim(pos)
            if delim:
                if paren:
                    return fail("unclosed left paren", pos)
                pos += 2 if trim_right else 0
                add("RIGHT", pos, pos + 2)
                pos += 2
                while trim_right and pos < n and text[pos] in _SPACE:
                    pos += 1
                start = pos
                break
            if pos >= n:
                return fail("unclosed action", pos)
            ch, begin = text[pos], pos
            pos += 1
            if ch in _SPACE:
                while pos < n and text[pos] in _SPACE:
                    pos += 1
                if text.startswith("-}}", pos):  # the last space is the trim marker's
                    pos -= 1
                    if pos == begin:
                        continue
                add("SPACE", begin, pos)
            elif ch == "=":
                add("ASSIGN", begin, pos)
            elif ch == ":":
                if not text.startswith("=", pos):
                    return fail("expected :=", begin)
                pos += 1
                add("DECLARE", begin, pos)
            elif ch == "|":
                add("PIPE", begin, pos)
            elif ch in "\"'":
                what = "quoted string" if ch == '"' else "character constant"
                while True:
                    if pos >= n or text[pos] == "\n":
                        return fail(f"unterminated {what}", begin)
                    if text[pos] == "\\":
                        pos += 1
                        if pos >= n or text[pos] == "\n":
                            return fail(f"unterminated {what}", begin)
                    elif text[pos] == ch:
                        pos += 1
                        break
                    pos += 1
                add("STRING" if ch == '"' else "CHAR", begin, pos)
            elif ch == "`":
                close = text.find("`", pos)
                if close < 0:
                    return fail("unterminated raw quoted string", begin)
                pos = close + 1
                add("RAWSTRING", begin, pos)
            elif ch == "$" or (ch == "." and not (pos < n and text[pos].isdigit())):
                if at_terminator(pos):
                    add("VAR" if ch == "$" else "DOT", begin, pos)
                    continue
                while pos < n and _alnum(text[pos]):
                    pos += 1
                if not at_terminator(pos):
                    return fail(f"bad character {_rune(text[pos])}", begin)
                add("VAR" if ch == "$" else "FIELD", begin, pos)
            elif ch in "+-." or ch.isdigit():
                pos = _NUMBER.match(text, begin).end()
                if pos < n and _alnum(text[pos]):
                    return fail(f"bad number syntax: {_go_quote(text[begin:pos + 1])}", begin)
                add("NUMBER", begin, pos)
            elif _alnum(ch):
                while pos < n and _alnum(text[pos]):
                    pos += 1
                if not at_terminator(pos):
                    return fail(f"bad character {_rune(text[pos])}", begin)
                word = text[begin:pos]
                add(word if word in _KEYWORDS else "BOOL" if word in ("true", "false")
                    else "IDENT", begin, pos)
            elif ch == "(":
                paren += 1
                add("LPAREN", begin, pos)
            elif ch == ")":
                paren -= 1
                if paren < 0:
                    return fail(f"unexpected right paren {_rune(ch)}", begin)
                add("RPAREN", begin, pos)
            elif ch.isascii() and ch.isprintable():
                add("CHAR_ITEM", begin, pos)
            else:
                return fail(f"unrecognized character in action: {_rune(ch)}", begin)


# parse tree nodes; str() is Go's Node.String(), used in error messages


class _Node:
    pos = 0


class _Text(_Node):
    def __init__(self, pos: int, text: str):
        self.pos, self.text = pos, text


class _Field(_Node):
    def __init__(self, pos: int, idents: list[str]):
        self.pos, self.idents = pos, idents

    def __str__(self) -> str:
        return "".join("." + i for i in self.idents)


class _Variable(_Node):
    def __init__(self, pos: int, idents: list[str]):
        self.pos, self.idents = pos, idents  # idents[0] is "$" or "$name"

    def __str__(self) -> str:
        return ".".join(self.idents)


class _Chain(_Node):
    def __init__(self, pos: int, node: _Node, fields: list[str]):
        self.pos, self.node, self.fields = pos, node, fields

    def __str__(self) -> str:
        inner = f"({self.node})" if isinstance(self.node, _Pipe) else str(self.node)
        return inner + "".join("." + f for f in self.fields)


class _Ident(_Node):
    def __init__(self, pos: int, name: str):
        self.pos, self.name = pos, name

    def __str__(self) -> str:
        return self.name


class _Literal(_Node):
    """`.`, nil, true/false, a number or a string: `value` evaluated, `text` as written."""

    def __init__(self, pos: int, text: str, value, kind: str):
        self.pos, self.text, self.value, self.kind = pos, text, value, kind

    def __str__(self) -> str:
        return self.text


class _Command(_Node):
    def __init__(self, pos: int):
        self.pos, self.args = pos, []

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, _Pipe) else str(a) for a in self.args)


class _Pipe(_Node):
    def __init__(self, pos: int):
        self.pos, self.decl, self.is_assign, self.cmds = pos, [], False, []

    def __str__(self) -> str:
        text = " | ".join(str(c) for c in self.cmds)
        if self.decl:
            text = ", ".join(self.decl) + (" = " if self.is_assign else " := ") + text
        return text


class _Action(_Node):
    def __init__(self, pos: int, pipe: _Pipe):
        self.pos, self.pipe = pos, pipe

    def __str__(self) -> str:
        return "{{" + str(self.pipe) + "}}"


class _Control(_Node):
    """if / with / range."""

    def __init__(self, kind: str, pos: int, pipe: _Pipe, body: list, orelse: list | None):
        self.kind, self.pos, self.pipe, self.body, self.orelse = kind, pos, pipe, body, orelse

    def __str__(self) -> str:
        return "{{" + f"{self.kind} {self.pipe}" + "}}"


class _Mark(_Node):
    """{{end}}, {{else}}, {{break}}, {{continue}}."""

    def __init__(self, kind: str, pos: int):
        self.kind, self.pos = kind, pos

    def __str__(self) -> str:
        return "{{" + self.kind + "}}"


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", "'": "'", '"': '"'}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)")


def _unquote(quoted: str) -> str | None:
    """Go's strconv.Unquote for "..." and '...' bodies; None when invalid."""
    bad = False

    def one(m: re.Match) -> str:
        nonlocal bad
        e = m.group(1)
        if e[0] in "xuU":
            return chr(int(e[1:], 16))
        if e[0] in "01234567" and len(e) == 3:
            return chr(int(e, 8))
        if e in _ESCAPES:
            return _ESCAPES[e]
        bad = True
        return ""

    text = _ESCAPE.sub(one, quoted[1:-1])
    return None if bad else text


class _Parser:
    def __init__(self, text: str):
        self.items = _lex(text)
        self.i = 0
        self.line = 1
        self.vars = ["$"]
        self.range_depth = 0

    # tokens
    def next(self) -> _Item:
        item = self.items[min(self.i, len(self.items) - 1)]
        self.i += 1
        self.line = item.line
        return item

    def backup(self) -> None:
        self.i -= 1

    def peek(self) -> _Item:
        return self.items[min(self.i, len(self.items) - 1)]

    def next_non_space(self) -> _Item:
        while (item := self.next()).kind == "SPACE":
            pass
        return item

    def peek_non_space(self) -> _Item:
        item = self.next_non_space()
        self.backup()
        return item

    def error(self, message: str):
        raise TemplateError(f"template: :{self.line}: {message}")

    def unexpected(self, item: _Item, context: str):
        if item.kind == "ERROR":
            self.error(item.val)
        self.error(f"unexpected {item} in {context}")

    def expect(self, kind: str, context: str) -> _Item:
        item = self.next_non_space()
        if item.kind != kind:
            self.unexpected(item, context)
        return item

    # grammar
    def parse(self) -> list:
        root = []
        while self.peek().kind != "EOF":
            node = self.text_or_action()
            if isinstance(node, _Mark) and node.kind in ("end", "else"):
                self.error(f"unexpected {node}")
            root.append(node)
        return root

    def item_list(self) -> tuple[list, _Mark]:
        nodes = []
        while self.peek_non_space().kind != "EOF":
            node = self.text_or_action()
            if isinstance(node, _Mark) and node.kind in ("end", "else"):
                return nodes, node
            nodes.append(node)
        self.error("unexpected EOF")

    def text_or_action(self) -> _Node:
        item = self.next_non_space()
        if item.kind == "TEXT":
            return _Text(item.pos, item.val)
        if item.kind == "LEFT":
            return self.action()
        self.unexpected(item, "input")

    def action(self) -> _Node:
        item = self.next_non_space()
        kind = item.kind
        if kind in ("define", "template", "block"):
            self.error(f"{{{{{kind}}}}} is not supported by hv's templates")
        if kind == "else":
            ahead = self.peek_non_space()
            if ahead.kind in ("if", "with"):  # {{else if ...}}: the `if` is left pending
                return _Mark("else", ahead.pos)
            return _Mark("else", self.expect("RIGHT", "else").pos)
        if kind == "end":
            return _Mark("end", self.expect("RIGHT", "end").pos)
        if kind in ("break", "continue"):
            after = self.next_non_space()
            if after.kind != "RIGHT":
                self.unexpected(after, "{{" + kind + "}}")
            if not self.range_depth:
                self.error(f"{{{{{kind}}}}} outside {{{{range}}}}")
            return _Mark(kind, item.pos)
        if kind in ("if", "with", "range"):
            return self.control(kind, item)
        self.backup()
        return _Action(self.peek().pos, self.pipeline("command"))

    def control(self, kind: str, item: _Item) -> _Control:
        mark = len(self.vars)
        try:
            pipe = self.pipeline(kind)
            self.range_depth += kind == "range"
            body, end = self.item_list()
            self.range_depth -= kind == "range"
            orelse = None
            if end.kind == "else":
                ahead = self.peek()
                if kind in ("if", "with") and ahead.kind == kind:  # else if / else with
                    self.next()
                    orelse = [self.control(kind, ahead)]
                else:
                    orelse, end = self.item_list()
                    if end.kind != "end":
                        self.error(f"expected end; found {end}")
            return _Control(kind, pipe.pos, pipe, body, orelse)
        finally:
            del self.vars[mark:]

    def pipeline(self, context: str) -> _Pipe:
        pipe = _Pipe(self.peek_non_space().pos)
        while True:  # declarations: $x := / $x = / (range) $i, $v :=
            save = self.i
            var = self.next_non_space()
            if var.kind != "VAR":
                self.i = save
                break
            after = self.next_non_space()
            if after.kind in ("ASSIGN", "DECLARE"):
                pipe.is_assign = after.kind == "ASSIGN"
                pipe.decl.append(var.val)
                self.vars.append(var.val)
                break
            if after.kind == "CHAR_ITEM" and after.val == ",":
                pipe.decl.append(var.val)
                self.vars.append(var.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().kind in ("VAR", "RIGHT", "RPAREN"):
                        continue
                    self.error("range can only initialize variables")
                self.error(f"too many declarations in {context}")
            self.i = save
            break
        while True:
            item = self.next_non_space()
            if item.kind in ("RIGHT", "RPAREN"):
                if not pipe.cmds:
                    self.error(f"missing value for {context}")
                for stage, cmd in enumerate(pipe.cmds[1:], start=2):
                    first = cmd.args[0]
                    if isinstance(first, _Literal):
                        self.error(f"non executable command in pipeline stage {stage}")
                if item.kind == "RPAREN":
                    self.backup()
                return pipe
            if item.kind in ("BOOL", "CHAR", "NUMBER", "nil", "RAWSTRING", "STRING", "VAR",
                             "LPAREN", "DOT", "FIELD", "IDENT"):
                self.backup()
                pipe.cmds.append(self.command())
            else:
                self.unexpected(item, context)

    def command(self) -> _Command:
        cmd = _Command(self.peek_non_space().pos)
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            item = self.next()
            if item.kind == "SPACE":
                continue
            if item.kind in ("RIGHT", "RPAREN"):
                self.backup()
            elif item.kind != "PIPE":
                self.unexpected(item, "operand")
            break
        if not cmd.args:
            self.error("empty command")
        return cmd

    def operand(self) -> _Node | None:
        node = self.term()
        if node is None or self.peek().kind != "FIELD":
            return node
        pos = self.peek().pos
        fields = []
        while self.peek().kind == "FIELD":
            fields.append(self.next().val[1:])
        if isinstance(node, _Field):
            return _Field(pos, node.idents + fields)
        if isinstance(node, _Variable):
            return _Variable(pos, node.idents + fields)
        if isinstance(node, _Literal):
            self.error(f"unexpected . after term {_go_quote(str(node))}")
        return _Chain(pos, node, fields)

    def term(self) -> _Node | None:
        item = self.next_non_space()
        kind = item.kind
        if kind == "ERROR":
            self.error(item.val)
        if kind == "IDENT":
            if item.val not in _FUNCS:
                self.error(f"function {_go_quote(item.val)} not defined")
            return _Ident(item.pos, item.val)
        if kind == "DOT":
            return _Literal(item.pos, ".", None, "dot")
        if kind == "nil":
            return _Literal(item.pos, "nil", None, "nil")
        if kind == "VAR":
            if item.val not in self.vars:
                self.error(f"undefined variable {_go_quote(item.val)}")
            return _Variable(item.pos, [item.val])
        if kind == "FIELD":
            return _Field(item.pos, [item.val[1:]])
        if kind == "BOOL":
            return _Literal(item.pos, item.val, item.val == "true", "bool")
        if kind in ("NUMBER", "CHAR"):
            return _Literal(item.pos, item.val, self.number(item), "number")
        if kind == "LPAREN":
            pipe = self.pipeline("parenthesized pipeline")
            close = self.next()
            if close.kind != "RPAREN":
                self.error(f"unclosed right paren: unexpected {close}")
            return pipe
        if kind in ("STRING", "RAWSTRING"):
            value = item.val[1:-1].replace("\r", "") if kind == "RAWSTRING" else (
                _unquote(item.val))
            if value is None:
                self.error("invalid syntax")
            return _Literal(item.pos, item.val, value, "string")
        self.backup()
        return None

    def number(self, item: _Item):
        text = item.val
        if item.kind == "CHAR":
            value = _unquote(text)
            if value is None or len(value) != 1:
                self.error(f"malformed character constant: {text}")
            return ord(value)
        if text.endswith("i"):
            self.error(f"complex numbers are not supported by hv's templates: {text}")
        try:
            return int(text, 0)
        except ValueError:
            pass
        try:
            if re.fullmatch(r"[+-]?0[0-7_]+", text):
                return int(text.replace("_", ""), 8)
            return float(text)
        except ValueError:
            self.error(f"illegal number syntax: {_go_quote(text)}")


class _Row(dict):
    """A row of a listing: docker/cli's formatter context (a Go struct, not a map)."""


class _Header(dict):
    """The header row of a table: every field is its column's header."""

    def __init__(self, headers: dict[str, str]):
        super().__init__()
        self.headers = headers

    def __missing__(self, key: str) -> str:
        return self.headers.get(key) or header_for(key)

    def __contains__(self, key) -> bool:
        return True


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _go_type(value) -> str:
    if value is None:
        return "interface {}"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "json.Number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "[]interface {}"
    return "map[string]interface {}"


def _show(value) -> str:
    """fmt's %v of a value: `[a b]`, `map[k:v]` (sorted keys), `<nil>`, true/false."""
    if value is _MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_show(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def _truth(value) -> bool:
    if value is _MISSING or value is None:
        return False
    if isinstance(value, (bool, int, float)):
        return bool(value)
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True


class _CallError(Exception):
    pass


def _json(value) -> str:
    if isinstance(value, _Row):  # docker/cli's MarshalJSON of a context: json.Marshal
        return go_json(dict(value))
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _title(s: str) -> str:
    out, prev = [], " "
    for ch in s:
        out.append(ch if prev.isalnum() or prev in "'_" else ch.upper())
        prev = ch
    return "".join(out)


def _sprint(args: list) -> str:  # fmt.Sprint: a space between operands when neither is a string
    out = ""
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out += " "
        out += _show(a)
    return out


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _printf(fmt: str, *args) -> str:
    """fmt.Sprintf for the common verbs (%v %s %d %q %t %x %X %f %g %e %%)."""
    rest = list(args)

    def one(m: re.Match) -> str:
        flags, width, prec, verb = m.groups()
        if verb == "%":
            return "%"
        if not rest:
            return f"%!{verb}(MISSING)"
        a = rest.pop(0)
        if verb in "vs":
            text = _show(a)
            if prec is not None:
                text = text[: int(prec)]
        elif verb == "q":
            text = _go_quote(_show(a))
        elif verb == "t" and isinstance(a, bool):
            text = _show(a)
        elif verb in "dxXob" and isinstance(a, int) and not isinstance(a, bool):
            text = format(a, {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb])
        elif verb in "xX" and isinstance(a, str):
            text = a.encode().hex()
            text = text.upper() if verb == "X" else text
        elif verb in "feEgG" and isinstance(a, (int, float)) and not isinstance(a, bool):
            text = format(float(a), f".{prec}{verb}" if prec is not None else (
                verb if verb in "gG" else f".6{verb}"))
        else:
            return f"%!{verb}({_go_type(a)}={_show(a)})"
        if width:
            text = text.ljust(int(width)) if "-" in flags else text.rjust(
                int(width), "0" if "0" in flags and verb not in "vsq" else " ")
        return text

    out = _VERB.sub(one, fmt)
    if rest:
        out += "%!(EXTRA " + ", ".join(f"{_go_type(a)}={_show(a)}" for a in rest) + ")"
    return out


def _index(item, *keys):
    if item is None:
        raise _CallError("index of untyped nil")
    for key in keys:
        if isinstance(item, dict):
            item = item.get(key) if isinstance(key, str) else None
        elif isinstance(item, (list, tuple, str)):
            if not isinstance(key, int) or isinstance(key, bool):
                raise _CallError(f"cannot index slice/array with type {_go_type(key)}")
            if not 0 <= key < len(item):
                raise _CallError(f"index out of range: {key}")
            item = item[key] if not isinstance(item, str) else item.encode()[key]
        else:
            raise _CallError(f"can't index item of type {_go_type(item)}")
    return item


def _slice(item, *bounds):
    if not isinstance(item, (list, tuple, str)):
        raise _CallError(f"can't slice item of type {_go_type(item)}")
    if len(bounds) > 2 or any(not isinstance(b, int) for b in bounds):
        raise _CallError("invalid slice index")
    lo = bounds[0] if bounds else 0
    hi = bounds[1] if len(bounds) > 1 else len(item)
    if not 0 <= lo <= hi <= len(item):
        raise _CallError(f"index out of range: {hi if hi > len(item) else lo}")
    return item[lo:hi]


def _length(item) -> int:
    if isinstance(item, str):
        return len(item.encode("utf-8", "surrogateescape"))
    if isinstance(item, (list, tuple, dict)):
        return len(item)
    raise _CallError(f"len of type {_go_type(item)}")


def _basic(a):
    if a is None or isinstance(a, (bool, str)):
        return a
    if isinstance(a, (int, float)):
        return float(a)
    raise _CallError("non-comparable type")


def _eq(a, *others):
    if not others:
        raise _CallError("missing argument for comparison")
    left = _basic(a)
    for b in others:
        right = _basic(b)
        if type(left) is not type(right) and None not in (left, right):
            raise _CallError("incompatible types for comparison")
        if left == right:
            return True
    return False


def _less(a, b) -> bool:
    left, right = _basic(a), _basic(b)
    if isinstance(left, (bool, type(None))) or isinstance(right, (bool, type(None))):
        raise _CallError("invalid type for comparison")
    if type(left) is not type(right):
        raise _CallError("incompatible types for comparison")
    return left < right


def _html(*args) -> str:
    s = _sprint(list(args))
    for a, b in (("&", "&amp;"), ("'", "&#39;"), ("<", "&lt;"), (">", "&gt;"),
                 ('"', "&#34;"), ("\0", "\ufffd")):
        s = s.replace(a, b)
    return s


def _urlquery(*args) -> str:
    from urllib.parse import quote_plus

    return quote_plus(_sprint(list(args)), safe="-_.~")


def _unsupported(name: str):
    def call(*_args):
        raise _CallError(f"{name} is not supported by hv's templates")
    return call


# name -> (function, number of arguments or None for any)
_FUNCTIONS = {
    "json": (_json, 1),
    "split": (lambda s, sep: s.split(sep) if sep else list(s), 2),
    "join": (lambda items, sep: sep.join(_show(i) for i in items), 2),
    "title": (lambda s: _title(_show(s)), 1),
    "lower": (lambda s: _show(s).lower(), 1),
    "upper": (lambda s: _show(s).upper(), 1),
    "pad": (lambda s, pre, suf: (" " * pre + s + " " * suf) if s else s, 3),
    "truncate": (lambda s, n: s if len(s) < n else s[:n], 2),
    "print": (lambda *a: _sprint(list(a)), None),
    "println": (lambda *a: " ".join(_show(x) for x in a) + "\n", None),
    "printf": (_printf, None),
    "not": (lambda a: not _truth(a), 1),
    "len": (_length, 1),
    "index": (_index, None),
    "slice": (_slice, None),
    "eq": (_eq, None),
    "ne": (lambda a, b: not _eq(a, b), 2),
    "lt": (_less, 2),
    "le": (lambda a, b: _less(a, b) or _eq(a, b), 2),
    "gt": (lambda a, b: not (_less(a, b) or _eq(a, b)), 2),
    "ge": (lambda a, b: not _less(a, b), 2),
    "html": (_html, None),
    "urlquery": (_urlquery, None),
    "js": (_unsupported("js"), None),
    "call": (_unsupported("call"), None),
}


class Template:
    """A parsed Go template; `execute(data)` gives its output for one value."""

    def __init__(self, text: str):
        self.text = text
        self.root = _Parser(text).parse()

    def execute(self, data, header: bool = False) -> str:
        return _Exec(self, data, header).run()


def parse_template(text: str) -> Template:
    """Parse `text` as Go would; a TemplateError ("template: :1: unclosed action") if not."""
    return Template(text)


class _Exec:
    def __init__(self, tmpl: Template, data, header: bool):
        self.tmpl, self.header = tmpl, header
        self.vars: list[tuple[str, object]] = [("$", data)]
        self.out: list[str] = []
        self.data = data

    def run(self) -> str:
        self.walk_list(self.data, self.tmpl.root)
        return "".join(self.out)

    def error(self, node: _Node, message: str):
        text = self.tmpl.text[: node.pos]
        line = 1 + text.count("\n")
        col = node.pos - (text.rfind("\n") + 1)
        context = str(node)
        if len(context) > 20:
            context = context[:20] + "..."
        raise TemplateError(
            f'template: :{line}:{col}: executing "" at <{context}>: {message}')

    # statements
    def walk_list(self, dot, nodes: list) -> None:
        for node in nodes:
            self.walk(dot, node)

    def walk(self, dot, node: _Node) -> None:
        if isinstance(node, _Text):
            self.out.append(node.text)
        elif isinstance(node, _Action):
            value = self.pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.out.append(_show(value))
        elif isinstance(node, _Control):
            mark = len(self.vars)
            try:
                if node.kind == "range":
                    self.range(dot, node)
                else:
                    value = self.pipeline(dot, node.pipe)
                    if _truth(value):
                        self.walk_list(value if node.kind == "with" else dot, node.body)
                    elif node.orelse is not None:
                        self.walk_list(dot, node.orelse)
            finally:
                del self.vars[mark:]
        elif isinstance(node, _Mark):
            raise _Break() if node.kind == "break" else _Continue()

    def range(self, dot, node: _Control) -> None:
        value = self.commands(dot, node.pipe)
        if isinstance(value, dict):
            pairs = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, (list, tuple)):
            pairs = list(enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            pairs = [(i, i) for i in range(value)]
        elif value is None or value is _MISSING:
            pairs = []
        else:
            self.error(node.pipe, f"range can't iterate over {_show(value)}")
        mark = len(self.vars)
        for key, elem in pairs:
            if len(node.pipe.decl) == 1:
                self.vars.append((node.pipe.decl[0], elem))
            elif len(node.pipe.decl) == 2:
                self.vars += [(node.pipe.decl[0], key), (node.pipe.decl[1], elem)]
            try:
                self.walk_list(elem, node.body)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del self.vars[mark:]
        if not pairs and node.orelse is not None:
            self.walk_list(dot, node.orelse)

    # expressions
    def pipeline(self, dot, pipe: _Pipe):
        value = self.commands(dot, pipe)
        for name in pipe.decl:
            if pipe.is_assign:
                for i in range(len(self.vars) - 1, -1, -1):
                    if self.vars[i][0] == name:
                        self.vars[i] = (name, value)
                        break
                else:
                    self.error(pipe, f"undefined variable: {name}")
            else:
                self.vars.append((name, value))
        return value

    def commands(self, dot, pipe: _Pipe):
        value = _MISSING
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        return value

    def not_a_function(self, args: list, final) -> None:
        if len(args) > 1 or final is not _MISSING:
            self.error(args[0], f"can't give argument to non-function {args[0]}")

    def command(self, dot, cmd: _Command, final):
        first = cmd.args[0]
        if isinstance(first, _Field):
            return self.fields(dot, dot, first, first.idents, cmd.args, final)
        if isinstance(first, _Chain):
            return self.chain(dot, first, cmd.args, final)
        if isinstance(first, _Ident):
            return self.call(dot, first, cmd, cmd.args, final)
        if isinstance(first, _Variable):
            return self.variable(dot, first, cmd.args, final)
        self.not_a_function(cmd.args, final)
        if isinstance(first, _Pipe):
            return self.pipeline(dot, first)
        if first.kind == "nil":
            self.error(first, "nil is not a command")
        return dot if first.kind == "dot" else first.value

    def arg(self, dot, node: _Node):
        if isinstance(node, _Field):
            return self.fields(dot, dot, node, node.idents, [node], _MISSING)
        if isinstance(node, _Variable):
            return self.variable(dot, node, [node], _MISSING)
        if isinstance(node, _Pipe):
            return self.pipeline(dot, node)
        if isinstance(node, _Ident):
            return self.call(dot, node, node, [node], _MISSING)
        if isinstance(node, _Chain):
            return self.chain(dot, node, [node], _MISSING)
        return dot if node.kind == "dot" else node.value

    def variable(self, dot, node: _Variable, args: list, final):
        name = node.idents[0]
        found = [v for var, v in self.vars if var == name]
        if not found:
            self.error(node, f"undefined variable: {name}")
        value = found[-1]
        if len(node.idents) == 1:
            self.not_a_function(args, final)
            return value
        return self.fields(dot, value, node, node.idents[1:], args, final)

    def chain(self, dot, node: _Chain, args: list, final):
        if isinstance(node.node, _Literal) and node.node.kind == "nil":
            self.error(node, f"indirection through explicit nil in {node}")
        receiver = self.arg(dot, node.node)
        return self.fields(dot, receiver, node, node.fields, args, final)

    def fields(self, dot, receiver, node: _Node, idents: list[str], args: list, final):
        for name in idents[:-1]:
            receiver = self.field(node, name, receiver, [], _MISSING)
        return self.field(node, idents[-1], receiver, args, final)

    def field(self, node: _Node, name: str, receiver, args: list, final):
        if receiver is None or receiver is _MISSING:
            self.error(node, f"nil pointer evaluating interface {{}}.{name}")
        if not isinstance(receiver, dict):
            self.error(node, f"can't evaluate field {name} in type {_go_type(receiver)}")
        if len(args) > 1 or final is not _MISSING:
            self.error(node, f"{name} is not a method but has arguments")
        if name in receiver:
            return receiver[name]
        if isinstance(receiver, _Row):
            self.error(node, f"can't evaluate field {name}")
        self.error(node, f'map has no entry for key "{name}"')

    def call(self, dot, ident: _Ident, cmd: _Node, args: list, final):
        name = ident.name
        if name in ("and", "or"):  # Go >= 1.18: evaluated left to right, only as needed
            nodes = args[1:]
            if not nodes and final is _MISSING:
                self.error(cmd, f"wrong number of args for {name}: want at least 1 got 0")
            value = None
            for i, node in enumerate(nodes):
                value = self.arg(dot, node)
                if _truth(value) != (name == "and") and (i < len(nodes) - 1 or
                                                        final is not _MISSING):
                    return value
            return final if final is not _MISSING else value
        values = [self.arg(dot, a) for a in args[1:]]
        if final is not _MISSING:
            values.append(final)
        if self.header and name in _HEADER_FUNCS:
            return values[0] if values else ""
        func, count = _FUNCTIONS[name]
        if count is not None and len(values) != count:
            self.error(cmd, f"wrong number of args for {name}: want {count} got {len(values)}")
        try:
            return func(*values)
        except _CallError as e:
            self.error(cmd, f"error calling {name}: {e}")
        except (TypeError, AttributeError, ValueError):
            self.error(cmd, f"wrong type for value in call to {name}")


def tabwrite(lines: list[str]) -> str:
    """Go's text/tabwriter with docker/cli's settings: tab-terminated cells are padded."""
    rows = [line.split("\t") for line in lines]
    widths: list[int] = []
    for cells in rows:
        for i, cell in enumerate(cells[:-1]):
            need = max(len(cell) + _PADDING, _MINWIDTH)
            if i >= len(widths):
                widths.append(need)
            else:
                widths[i] = max(widths[i], need)
    out = []
    for cells in rows:
        padded = [c.ljust(widths[i]) for i, c in enumerate(cells[:-1])]
        out.append("".join(padded) + cells[-1])
    return "".join(line + "\n" for line in out)


def render(
    out: TextIO,
    rows: list[dict[str, str]],
    columns: list[tuple[str, str]],
    fmt: str | None,
) -> None:
    """Write rows as Docker would for this --format value (None: the default table).

    The template is parsed before anything is written, and every row is rendered before
    the first line goes out: a bad template or field prints nothing but the error
    ("template parsing error: template: :1: unclosed action"), as docker/cli does."""
    fmt = (fmt or "").strip()
    headers = {key: header for header, key in columns}
    if not fmt or fmt == "table":
        template = "\t".join(f"{{{{.{key}}}}}" for _, key in columns)
        table = True
    elif fmt.startswith("table"):
        template, table = _unescape(fmt[5:].strip()), True
    elif fmt == "json":
        template, table = "{{json .}}", False
    else:
        template, table = _unescape(fmt), False
    tmpl = _parse_wrapped(template)
    lines = []
    for row in rows:
        try:
            lines.append(tmpl.execute(_Row(row)))
        except TemplateError as e:
            raise TemplateError(f"template parsing error: {e.message}") from None
    if not table:
        out.write("".join(line + "\n" for line in lines))
        return
    try:
        header = tmpl.execute(_Header(headers), header=True)
    except TemplateError:  # docker/cli ignores errors of the header row
        header = ""
    out.write(tabwrite([header, *lines]))


def _parse_wrapped(template: str) -> Template:
    try:
        return parse_template(template)
    except TemplateError as e:
        raise TemplateError(f"template parsing error: {e.message}") from None
