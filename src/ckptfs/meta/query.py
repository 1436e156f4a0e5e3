"""The query language behind `ckptfs find STORE EXPR` (docs/query.md).

An expression such as ``metrics.eval_loss < 0.3 and tags == production`` is parsed once
with a LALR grammar and compiled into nested closures, so testing one sidecar document is
a handful of Python calls with no tree walking: `find` runs it over 100,000 versions.

Semantics in brief: a comparison is true only when the field holds a value of the
literal's kind (number, string, boolean, or a string that parses as an ISO 8601 instant
for a date literal) and the relation holds; a missing or null field makes every
comparison false, `!=` included. A list (or a path through a list of objects) matches
if any element does. A bare single-segment name not at the top level is looked up in
`metrics`.
"""
import fnmatch
import operator
import re
from datetime import datetime, timezone
from functools import lru_cache

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

__all__ = ["MISSING", "Query", "QueryError", "compile_query", "field_value", "sort_key",
           "sort_documents"]


class _Missing:
    """The type of MISSING: what a path that leads nowhere evaluates to."""
    __slots__ = ()

    def __repr__(self):
        return "MISSING"

    def __bool__(self):
        return False


MISSING = _Missing()


class QueryError(ValueError):
    """A bad expression. str() gives the reason, the expression and a caret line."""

    def __init__(self, reason: str, expr: str, column: int):
        self.reason = reason
        self.expr = expr
        self.column = column  # 1-based offset into the whole expression
        shown = re.sub(r"\s", " ", expr)  # newlines or tabs would misplace the caret
        super().__init__(f"{reason} at column {column}:\n  {shown}\n  {' ' * (column - 1)}^")


class _Problem(Exception):
    """Raised while lexing or compiling; compile_query turns it into a QueryError."""

    def __init__(self, reason: str, position: int):
        super().__init__(reason)
        self.reason = reason
        self.position = position


# --- grammar -----------------------------------------------------------------------------

# Keywords are case-insensitive and must stand alone, so `notes` and `order` stay fields.
# FIELD and OP are deliberately loose: the lexer callbacks below check them and explain
# what is wrong ("unknown operator '=>'") instead of failing on the first odd character.
# WS is defined here rather than imported: loading lark's common.lark doubles import time.
# WORD is a bare value; whether it is a number, a date or text is decided at compile time.
# When a token is unexpected, lark re-lexes it with all terminals to name it; STRING and
# WORD outrank FIELD there, and FIELD's unquoted characters are a subset of WORD's, so that
# fallback never produces a FIELD (whose callback would then blame a "bad field name").
_GRAMMAR = r"""
?start: disjunction
?disjunction: conjunction (_OR conjunction)*
?conjunction: negation (_AND negation)*
?negation: _NOT negation -> negate
         | atom
?atom: FIELD OP value -> comparison
     | _HAS FIELD -> has
     | "(" disjunction ")"
?value: STRING | WORD

_OR.2: /or(?=[\s()]|$)/i
_AND.2: /and(?=[\s()]|$)/i
_NOT.2: /not(?=[\s()]|$)/i
_HAS.2: /has(?=[\s()]|$)/i
OP: /[<>=!~]+/
STRING.1: /"(?:[^"\\]|\\[\s\S])*"|'(?:[^'\\]|\\[\s\S])*'/
WORD.1: /[A-Za-z0-9_.*?\[\]\/!:+-]+/
FIELD: /(?:[A-Za-z0-9_.\/:-]|"(?:[^"\\]|\\[\s\S])*"|'(?:[^'\\]|\\[\s\S])*')+/
WS: /\s+/

%ignore WS
"""

_KEYWORDS = frozenset({"and", "or", "not", "has"})
_OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
              "==": operator.eq, "=": operator.eq, "!=": operator.ne, "~": "glob", "!~": "glob"}
_OPERATOR_HINTS = {"!": "use 'not' to negate", "=<": "did you mean '<='?",
                   "=>": "did you mean '>='?", "=~": "did you mean '~'?",
                   "~=": "did you mean '~'?", "===": "did you mean '=='?"}


def _check_operator(token: Token) -> Token:
    if token.value not in _OPERATORS:
        hint = _OPERATOR_HINTS.get(token.value, "operators are < <= > >= == != ~ !~")
        raise _Problem(f"unknown operator {token.value!r} ({hint})", token.start_pos)
    return token


def _check_field(token: Token) -> Token:
    if token.value.lower() in _KEYWORDS:
        raise _Problem(f"expected a field name, found the keyword {token.value!r}",
                       token.start_pos)
    if _NUMBER.fullmatch(token.value):
        raise _Problem(f"expected a field name, found the number {token.value!r} "
                       "(write: field operator value)", token.start_pos)
    try:
        _split_field(token.value)
    except _Problem as problem:
        raise _Problem(problem.reason, token.start_pos + problem.position) from None
    return token


_PARSER = Lark(_GRAMMAR, parser="lalr", lexer="contextual", maybe_placeholders=False,
               lexer_callbacks={"OP": _check_operator, "FIELD": _check_field})


# --- field paths -------------------------------------------------------------------------

_SEGMENT = re.compile(r"""[A-Za-z_][A-Za-z0-9_-]*|"((?:[^"\\]|\\[\s\S])*)"|'((?:[^'\\]|\\[\s\S])*)'""")
_ESCAPE = re.compile(r"""\\([\\"'])""")


def _unquote(body: str) -> str:
    """The text of a quoted string: only \\\\ \\" and \\' are escapes; other backslashes stay."""
    return _ESCAPE.sub(r"\1", body)


@lru_cache(maxsize=1024)
def _split_field(dotted: str) -> tuple[str, ...]:
    """`metrics."eval/loss"` -> ("metrics", "eval/loss"); raises _Problem(reason, offset)."""
    segments, position = [], 0
    while True:
        match = _SEGMENT.match(dotted, position)
        if match is None:
            raise _Problem(f"bad field name {dotted!r}: expected a name (letters, digits, '_', "
                           "'-' not first) or a quoted string", position)
        quoted = match.group(1) if match.group(1) is not None else match.group(2)
        segments.append(match.group(0) if quoted is None else _unquote(quoted))
        position = match.end()
        if position == len(dotted):
            return tuple(segments)
        if dotted[position] != ".":
            raise _Problem(f"bad field name {dotted!r}: expected '.' between segments", position)
        position += 1


def split_field(dotted: str) -> tuple[str, ...]:
    """The names along a dotted field as written in a query: 'metrics."eval/loss"' ->
    ('metrics', 'eval/loss'). Raises QueryError for a malformed one."""
    try:
        return _split_field(dotted)
    except _Problem as problem:
        raise QueryError(problem.reason, dotted, problem.position + 1) from None


def _walk(value, path: tuple, start: int = 0):
    """Follow path[start:] from value; a list of objects is mapped over (any-semantics)."""
    for position in range(start, len(path)):
        kind = type(value)
        if kind is dict:
            value = value.get(path[position], MISSING)
        elif kind is list:
            return _walk_list(value, path, position)
        else:
            return MISSING
    return value


def _walk_list(items: list, path: tuple, position: int):
    """The non-null values path[position:] reaches from each item, flattened; MISSING if none."""
    found = []
    for item in items:
        value = _walk(item, path, position)
        if value is MISSING or value is None:
            continue
        if type(value) is list:
            found.extend(value)
        else:
            found.append(value)
    return found if found else MISSING


def _resolve(doc: dict, path: tuple):
    if len(path) == 1 and path[0] not in doc:
        metrics = doc.get("metrics")  # the bare-name rule: `eval_loss` means metrics.eval_loss
        return metrics.get(path[0], MISSING) if type(metrics) is dict else MISSING
    return _walk(doc, path)


def field_value(doc: dict, dotted: str):
    """The value at a dotted path (quoted segments allowed), or MISSING.

    A single-segment name absent from the top level is looked up in doc["metrics"].
    Through a list of objects the result is the list of the values found."""
    try:
        path = _split_field(dotted)
    except _Problem as problem:
        raise QueryError(problem.reason, dotted, problem.position + 1) from None
    return _resolve(doc, path)


def _getter(path: tuple):
    """A closure equivalent to `lambda doc: _resolve(doc, path)`, specialised for speed."""
    if len(path) == 1:
        name = path[0]

        def get_bare(doc):
            value = doc.get(name, MISSING)
            if value is MISSING:
                metrics = doc.get("metrics")
                return metrics.get(name, MISSING) if type(metrics) is dict else MISSING
            return value
        return get_bare
    first, second = path[0], path[1]
    if len(path) == 2:
        def get_pair(doc):
            inner = doc.get(first, MISSING)
            if type(inner) is dict:
                return inner.get(second, MISSING)
            return _walk(inner, path, 1)
        return get_pair

    def get_path(doc):
        inner = doc.get(first, MISSING)
        if type(inner) is dict:
            return _walk(inner.get(second, MISSING), path, 2)
        return _walk(inner, path, 1)
    return get_path


# --- literals ----------------------------------------------------------------------------

_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?")
_NAMED = {"true": ("bool", True), "false": ("bool", False), "null": ("null", None)}


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _literal(token: Token) -> tuple[str, object]:
    """(kind, value) of a right-hand side: number, date, bool, null or string."""
    text = token.value
    if token.type == "STRING":
        return "string", _unquote(text[1:-1])
    if _NUMBER.fullmatch(text):
        return "number", float(text) if any(c in text for c in ".eE") else int(text)
    if _DATE.fullmatch(text):
        try:
            return "date", _as_utc(datetime.fromisoformat(text))
        except ValueError:
            raise _Problem(f"invalid date {text!r}", token.start_pos) from None
    if text.lower() in _NAMED:
        return _NAMED[text.lower()]
    if text.lower() in _KEYWORDS:
        raise _Problem(f"expected a value, found the keyword {text!r} (quote it to mean the text)",
                       token.start_pos)
    if ":" in text or "+" in text:
        # Only dates and exponents use these; a near-miss like 2026-11-01T10:00:0 is a typo.
        raise _Problem(f"{text!r} is not a valid date or number (quote it to mean the text)",
                       token.start_pos)
    return "string", text


@lru_cache(maxsize=1 << 16)
def _parse_instant(text: str):
    """A field's string as an aware datetime (naive = UTC), or None if it is not ISO 8601."""
    try:
        return _as_utc(datetime.fromisoformat(text))
    except ValueError:
        return None


# --- compiling ---------------------------------------------------------------------------

_NUMBER_TYPES = frozenset({int, float})  # exact types: bool is not a number here
_STRING_TYPES = frozenset({str})
_BOOL_TYPES = frozenset({bool})


def _typed_test(types: frozenset, compare, literal):
    """True when the value (or any list element) has one of `types` and compare() holds."""
    def test(value):
        kind = type(value)
        if kind in types:
            return compare(value, literal)
        if kind is list:
            return any(map(test, value))
        return False
    return test


def _glob_test(pattern: str, negated: bool):
    match = re.compile(fnmatch.translate(pattern)).match  # what fnmatchcase does, compiled once
    if negated:
        return _typed_test(_STRING_TYPES, lambda value, _: match(value) is None, None)
    return _typed_test(_STRING_TYPES, lambda value, _: match(value) is not None, None)


def _date_test(relation, moment: datetime):
    def compare(value, literal):
        parsed = _parse_instant(value)
        return parsed is not None and relation(parsed, literal)
    return _typed_test(_STRING_TYPES, compare, moment)


def _value_test(op_token: Token, value_token: Token):
    relation = _OPERATORS[op_token.value]
    if relation == "glob":
        # The pattern is the text as written, so `sealed_at ~ 2026-11-*` globs the string.
        text = value_token.value
        pattern = _unquote(text[1:-1]) if value_token.type == "STRING" else text
        return _glob_test(pattern, negated=op_token.value == "!~")
    kind, literal = _literal(value_token)
    if kind == "null":
        raise _Problem("null matches nothing: a null or missing field makes every comparison "
                       "false; use 'has <field>' or 'not has <field>'", value_token.start_pos)
    if kind == "bool":
        if relation not in (operator.eq, operator.ne):
            raise _Problem(f"true and false only work with == and !=, not {op_token.value!r}",
                           op_token.start_pos)
        return _typed_test(_BOOL_TYPES, relation, literal)
    if kind == "date":
        return _date_test(relation, literal)
    return _typed_test(_NUMBER_TYPES if kind == "number" else _STRING_TYPES, relation, literal)


def _comparison(field_token: Token, op_token: Token, value_token: Token):
    get = _getter(_split_field(field_token.value))
    test = _value_test(op_token, value_token)
    return lambda doc: test(get(doc))


def _has(field_token: Token):
    get = _getter(_split_field(field_token.value))

    def has(doc):
        value = get(doc)
        return value is not MISSING and value is not None
    return has


# Deeper nesting than this (parentheses alternating and/or) is refused: compiling and
# testing recurse once per level, and no real query comes near it.
MAX_NESTING = 100


def _all_of(parts):
    return lambda doc: all(part(doc) for part in parts)


def _any_of(parts):
    return lambda doc: any(part(doc) for part in parts)


def _compile(node: Tree, fields: set, depth: int = 0):
    """The predicate closure for a parse tree; collects field names into `fields`. A chain
    of `and`s (or `or`s) is one flat test, however long; `not not …` collapses."""
    if depth > MAX_NESTING:
        raise _Problem(f"the expression is nested too deeply (more than {MAX_NESTING} levels "
                       "of parentheses): simplify it", 0)
    negations = 0
    while node.data == "negate":
        negations += 1
        node = node.children[0]
    if node.data == "comparison":
        fields.add(node.children[0].value)
        predicate = _comparison(*node.children)
    elif node.data == "has":
        fields.add(node.children[0].value)
        predicate = _has(node.children[0])
    else:
        parts = tuple(_compile(child, fields, depth + 1) for child in node.children)
        predicate = (_all_of if node.data == "conjunction" else _any_of)(parts)
    if negations % 2:
        inner = predicate
        return lambda doc: not inner(doc)
    return predicate


class Query:
    """A compiled expression: `matches(doc)` tells whether a sidecar document satisfies it."""
    __slots__ = ("expr", "fields", "_predicate")

    def __init__(self, expr: str, fields: frozenset, predicate):
        self.expr = expr
        self.fields = fields  # dotted names as written, e.g. 'metrics."eval/loss"', 'eval_loss'
        self._predicate = predicate

    def matches(self, doc: dict) -> bool:
        return self._predicate(doc)

    def __repr__(self):
        return f"Query({self.expr!r})"


def compile_query(expr: str) -> Query:
    """Parse and compile `expr`; raises QueryError pointing at the offending column."""
    if not expr.strip():
        raise QueryError("empty expression: expected a comparison such as "
                         "'metrics.eval_loss < 0.3'", expr, 1)
    _check_quotes(expr)
    try:
        tree = _PARSER.parse(expr)
        fields: set = set()
        predicate = _compile(tree, fields)
    except _Problem as problem:
        raise QueryError(problem.reason, expr, problem.position + 1) from None
    except (UnexpectedCharacters, UnexpectedToken, UnexpectedEOF) as error:
        reason, position = _describe_syntax_error(expr, error)
        raise QueryError(reason, expr, position + 1) from None
    return Query(expr, frozenset(fields), predicate)


# --- error messages ----------------------------------------------------------------------

# Lark's terminal names, in the order they read best, mapped to words for users.
_READABLE = [("FIELD", "a field name"), ("_NOT", "'not'"), ("_HAS", "'has'"), ("LPAR", "'('"),
             ("OP", "an operator (< <= > >= == != ~ !~)"), ("STRING", "a value"),
             ("WORD", "a value"), ("_AND", "'and'/'or'"), ("_OR", "'and'/'or'"),
             ("RPAR", "')'"), ("$END", "the end of the expression")]
_PREVIOUS_TOKEN = re.compile(r"""(?:[<>=!~]+|[()]|[^\s()<>=!~"']+)\Z""")


def _check_quotes(expr: str) -> None:
    """Reject an unterminated string up front: lark would only report an odd character."""
    position = 0
    while position < len(expr):
        quote = expr[position]
        if quote in "\"'":
            end = position + 1
            while end < len(expr) and expr[end] != quote:
                end += 2 if expr[end] == "\\" else 1
            if end >= len(expr):
                raise QueryError(f"unterminated string: this {quote} is never closed",
                                 expr, position + 1)
            position = end
        position += 1


def _expected_phrase(names) -> str:
    phrases = []
    for name, phrase in _READABLE:
        if name in names and phrase not in phrases:
            phrases.append(phrase)
    if not phrases:
        return "something else"
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " or " + phrases[-1]


def _after(expr: str, position: int) -> str:
    """" after '<'" when the token before `position` is an operator, keyword or '('."""
    head = expr[:position].rstrip()
    match = _PREVIOUS_TOKEN.search(head)
    if match is None:
        return ""
    previous = match.group(0)
    if previous in _OPERATORS or previous == "(" or previous.lower() in _KEYWORDS:
        return f" after {previous!r}"
    return ""


def _accepted_after(prefix: str) -> set:
    """The terminals the parser accepts after `prefix`. Lark's own sets come from LALR states
    shared between contexts (a ')' offered at the top level), so ask the parser itself."""
    try:
        interactive = _PARSER.parse_interactive(prefix)
        interactive.exhaust_lexer()
        return interactive.accepts()
    except Exception:  # only a nicer message is at stake; fall back to lark's own set
        return set()


def _describe_syntax_error(expr: str, error) -> tuple[str, int]:
    """(reason, 0-based position) in plain words for a lark parse error."""
    if isinstance(error, UnexpectedCharacters):
        position, found = error.pos_in_stream, expr[error.pos_in_stream]
        expected = _accepted_after(expr[:position]) or error.allowed
    elif isinstance(error, UnexpectedToken) and error.token.type != "$END":
        position, found = error.token.start_pos, error.token.value
        expected = error.accepts or error.expected
    else:  # the expression ended early; point just past its last token
        position, found = len(expr.rstrip()), None
        expected = getattr(error, "accepts", None) or error.expected
    if found == ")" and "RPAR" not in expected:
        return "unbalanced ')': there is no '(' for it to close", position
    if found in ("&", "&&", "|", "||"):
        return f"unexpected {found!r}: use 'and' / 'or'", position
    if found and found.startswith("!") and "_NOT" in expected:
        return f"unexpected {found!r}: use 'not' to negate", position
    wanted = f"expected {_expected_phrase(expected)}{_after(expr, position)}"
    if found is None:
        if "RPAR" in expected and "FIELD" not in expected and "WORD" not in expected:
            return f"unbalanced '(': {wanted}", position
        return wanted, position
    return f"{wanted}, found {found!r}", position


# --- sorting -----------------------------------------------------------------------------

def sort_key(value) -> tuple:
    """A total-order key for ascending sorts of any mix of values: numbers < strings <
    everything else (bools, null, lists, objects, NaN) < MISSING. For descending order
    with MISSING still last, use sort_documents."""
    kind = type(value)
    if (kind is int or kind is float) and value == value:
        return (0, value)
    if kind is str:
        return (1, value)
    return (3,) if value is MISSING else (2,)


def sort_documents(docs: list[dict], field: str, descending: bool = False) -> list[dict]:
    """Documents ordered by `field` (bare-name rule applies), stable. Numbers sort before
    strings (after them when descending); documents whose value is missing or not a number
    or string come last in both directions, in their original order."""
    try:
        path = _split_field(field)
    except _Problem as problem:
        raise QueryError(problem.reason, field, problem.position + 1) from None
    numbers, strings, rest = [], [], []
    for doc in docs:
        value = _resolve(doc, path)
        group = sort_key(value)[0]
        if group == 0:
            numbers.append((value, doc))
        elif group == 1:
            strings.append((value, doc))
        else:
            rest.append(doc)
    first_key = operator.itemgetter(0)
    numbers.sort(key=first_key, reverse=descending)  # reverse=True keeps ties in order
    strings.sort(key=first_key, reverse=descending)
    ordered = strings + numbers if descending else numbers + strings
    return [doc for _, doc in ordered] + rest
