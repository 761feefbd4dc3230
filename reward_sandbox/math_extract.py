"""Final-answer extraction and the cheap pre-filter for math rewards.

Pure string functions, no sympy: they run in the caller's process before
anything reaches the verifier workers (reward_sandbox/math_pool.py).

- ``extract_answer(completion)``: the content of the last ``\\boxed{...}``
  (or ``\\fbox{...}``), else the answer after a GSM8K ``####`` marker, else the
  last number in the text; ``None`` when there is nothing to grade.
- ``is_absurd(answer)``: True for answers that would drive sympy into
  super-exponential work (a numeric exponent over MAX_EXPONENT, such as
  9^{9^{9}}; power towers deeper than MAX_POWER_NESTING; large powers of
  expressions with variables; huge factorials) or that are too long to be
  an answer. Those score 0 without being parsed.
"""

from __future__ import annotations

import re

# An answer longer than this is not a final answer; refusing it also bounds
# the parser's work.
MAX_ANSWER_CHARS = 512
# Integer exponents above this are refused: 10^{5000} is still a 5000-digit
# integer sympy can handle instantly, 10^{10^6} is not.
MAX_EXPONENT = 5000
MAX_FACTORIAL = 500
# (x+1)^{200} is cheap to write and seconds of polynomial expansion to compare
MAX_SYMBOLIC_EXPONENT = 100
# Number of '^' nested inside one exponent before we call it a tower.
MAX_POWER_NESTING = 2

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_GSM8K_RE = re.compile(r"####\s*([^\n]+)")


def _balanced(text: str, start: int) -> str | None:
    """Return the text inside the brace group that opens at text[start-1]."""
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            i += 2  # skip escaped char such as \{ or \}
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} / \\fbox{...} in text."""
    found = None
    for m in _BOX_RE.finditer(text):
        inner = _balanced(text, m.end())
        if inner is not None:
            found = inner
    return found


def last_number(text: str) -> str | None:
    """Last number in text, thousands separators removed ("1,234.5" -> "1234.5")."""
    matches = _NUMBER_RE.findall(text)
    if not matches:
        return None
    num = matches[-1].rstrip(",")
    return num.replace(",", "")


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion, or None when it states none."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be str, got {type(completion).__name__}")
    boxed = last_boxed(completion)
    if boxed is not None:
        boxed = boxed.strip()
        return boxed or None
    gsm = _GSM8K_RE.findall(completion)
    if gsm:
        num = last_number(gsm[-1])
        return num if num is not None else gsm[-1].strip() or None
    return last_number(completion)


def _exponent_at(text: str, j: int) -> tuple[str, int]:
    """The exponent starting at text[j] (after '^'), and where it ends.

    An unbraced exponent followed by another '^' continues the tower
    (9^9^9 is 9^(9^9) to the expression parser).
    """
    while j < len(text) and text[j] == " ":
        j += 1
    if j < len(text) and text[j] == "{":
        inner = _balanced(text, j + 1)
        if inner is None:
            return text[j + 1 :], len(text)
        return inner, j + 2 + len(inner)
    m = re.match(r"\(?-?[\w.]+\)?", text[j:])
    tok = m.group(0) if m else ""
    end = j + len(tok)
    k = end
    while k < len(text) and text[k] == " ":
        k += 1
    if tok and k < len(text) and text[k] == "^":
        rest, end = _exponent_at(text, k + 1)
        tok = f"{tok}^{{{rest}}}"
    return tok, end


def _exponent_groups(text: str) -> list[str]:
    """Every exponent in text: the brace group or the token (chain) after '^'."""
    return [_exponent_at(text, i + 1)[0] for i, ch in enumerate(text) if ch == "^"]


def _nesting(text: str) -> int:
    """Depth of the deepest power tower (a^b^c has depth 2)."""
    exps = _exponent_groups(text)
    if not exps:
        return 0
    return 1 + max(_nesting(e) for e in exps)


def _strip_group(t: str) -> str:
    t = t.strip()
    while len(t) >= 2 and t[0] + t[-1] in ("{}", "()"):
        t = t[1:-1].strip()
    return t


def exponent_value(text: str) -> float | None:
    """Value of a purely numeric exponent (digits, braces, nested powers), else None.

    Computed in floats, so a tower overflows to inf instead of being evaluated.
    """
    t = _strip_group(text).replace(",", "")
    if re.fullmatch(r"-?\d+(?:\.\d+)?", t):
        return float(t)
    depth = 0
    for i, ch in enumerate(t):
        depth += ch in "{("
        depth -= ch in "})"
        if ch == "^" and depth == 0:
            base, exp = exponent_value(t[:i]), exponent_value(t[i + 1 :])
            if base is None or exp is None:
                return None
            try:
                return abs(base) ** exp if exp < 1e6 else float("inf")
            except OverflowError:
                return float("inf")
    return None


def _has_variable(text: str) -> bool:
    plain = re.sub(r"\\[a-zA-Z]+", " ", text)  # drop \frac, \pi, \text ...
    return re.search(r"[a-zA-Z]", plain) is not None


def is_absurd(answer: str) -> bool:
    """True if answer must not reach sympy (see module docstring)."""
    if len(answer) > MAX_ANSWER_CHARS:
        return True
    # Python-style powers count as well: 9**9**9
    text = answer.replace("**", "^")
    if _nesting(text) > MAX_POWER_NESTING:
        return True
    symbolic = _has_variable(text)
    for exp in _exponent_groups(text):
        value = exponent_value(exp)
        if value is not None and (value > MAX_EXPONENT or (symbolic and value > MAX_SYMBOLIC_EXPONENT)):
            return True
        for num in re.findall(r"\d+", exp.replace(",", "")):
            if len(num) > 6 or int(num) > MAX_EXPONENT:
                return True
    for num in re.findall(r"(\d+)\s*!", text):
        if len(num) > 4 or int(num) > MAX_FACTORIAL:
            return True
    if re.search(r"\\(?:factorial|Gamma)\b", text) and re.search(r"\d{4,}", text):
        return True
    return False
