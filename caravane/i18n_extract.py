"""Babel extractors for key-style messages: ``t("key")`` and ``t.n("key", count)``.

Babel's own Python and Jinja2 extractors only see ``gettext``-like names; pages here call a
:class:`~caravane.i18n.Translator` named ``t`` (or ``Translator(lang)("key")``), errors name
theirs with ``CaravaneError.say("key", ...)``, and some calls build the key from a literal
prefix (``t('hub.role.' ~ user.role)``) or pick one of two literals. These extractors read the
source as a syntax tree (``ast``, Jinja2's parser), expand a prefix to every key of the English
and French catalogues that starts with it, and report each message as ``gettext`` /
``ngettext`` so ``pybabel extract -F babel.cfg`` needs no ``-k``.
Each message carries its English and French texts as an extracted comment, so a translator
working from ``caravane.pot`` sees what to translate, not just a key.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from jinja2 import Environment, nodes
from jinja2.exceptions import TemplateSyntaxError

from caravane import i18n

TRANSLATOR_NAMES = frozenset({"t", "tr", "_t", "N_"})  # N_: marked, looked up elsewhere
NOTE_TAG = "# i18n:"  # a comment line right above a call: a note for translators

Extracted = tuple[int, str, str | tuple[str, str], list[str]]


@dataclass(frozen=True)
class Use:
    """One message id a source file asks for; ``prefix`` when only its start is literal."""

    key: str
    plural: bool
    lineno: int
    prefix: bool = False
    dynamic: bool = False  # the id is computed: nothing to extract
    note: str = ""


def _source_texts(locales: str | None) -> dict[str, dict[str, i18n.Entry]]:
    """English and French messages: of ``locales`` (the ``locales`` option), else the runtime's."""
    out: dict[str, dict[str, i18n.Entry]] = {}
    for code in i18n.FALLBACKS:
        if locales:
            path = i18n.po_path(Path(locales), code)
            out[code] = i18n.parse(path, code).messages if path.exists() else {}
        else:
            out[code] = i18n.catalogue(code)
    return out


def known_keys(texts: dict[str, dict[str, i18n.Entry]]) -> list[str]:
    return sorted({key for messages in texts.values() for key in messages})


def _comments(key: str, texts: dict[str, dict[str, i18n.Entry]]) -> list[str]:
    out = []
    for code in ("en", "fr"):
        entry = texts.get(code, {}).get(key)
        if entry is None:
            continue
        text = entry if isinstance(entry, str) else " | ".join(entry)
        out.append(f"{code}: {text}")
    return out


# ---------------------------------------------------------------------------- Python


def _py_keys(node: ast.expr) -> Iterator[tuple[str, bool]]:
    """(literal, is_prefix) for every key the argument may evaluate to."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value, False
    elif isinstance(node, ast.IfExp):
        yield from _py_keys(node.body)
        yield from _py_keys(node.orelse)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        for literal, _ in _py_keys(node.left):
            yield literal, True
    elif isinstance(node, ast.JoinedStr) and node.values:
        head = node.values[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            yield head.value, True


def _py_is_translator(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in TRANSLATOR_NAMES
    if isinstance(node, ast.Attribute):  # self.t, ctx.t
        return node.attr in TRANSLATOR_NAMES
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Translator"
    )


def python_uses(source: str) -> Iterator[Use]:
    lines = source.splitlines()

    def note(lineno: int) -> str:
        above = lines[lineno - 2].strip() if lineno >= 2 else ""
        return above[len(NOTE_TAG) :].strip() if above.startswith(NOTE_TAG) else ""

    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        says = isinstance(func, ast.Attribute) and func.attr == "say"  # CaravaneError.say(key)
        if _py_is_translator(func) or says:
            plural = False
        elif isinstance(func, ast.Attribute) and func.attr == "n" and _py_is_translator(func.value):
            plural = True
        else:
            continue
        found = list(_py_keys(node.args[0]))
        for literal, prefix in found:
            yield Use(literal, plural, node.lineno, prefix, note=note(node.lineno))
        if not found:
            yield Use("", plural, node.lineno, dynamic=True)


# ---------------------------------------------------------------------------- Jinja2


def _jinja_keys(node: nodes.Node) -> Iterator[tuple[str, bool]]:
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        yield node.value, False
    elif isinstance(node, nodes.CondExpr):
        yield from _jinja_keys(node.expr1)
        if node.expr2 is not None:
            yield from _jinja_keys(node.expr2)
    elif isinstance(node, nodes.Concat) and node.nodes:
        for literal, _ in _jinja_keys(node.nodes[0]):
            yield literal, True
    elif isinstance(node, nodes.Add):
        for literal, _ in _jinja_keys(node.left):
            yield literal, True


def _jinja_is_translator(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name in TRANSLATOR_NAMES


_jinja_env = Environment(extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"])


def jinja_uses(source: str) -> Iterator[Use]:
    tree = _jinja_env.parse(source)
    for node in tree.find_all(nodes.Call):
        if not node.args:
            continue
        func = node.node
        if _jinja_is_translator(func):
            plural = False
        elif (
            isinstance(func, nodes.Getattr) and func.attr == "n" and _jinja_is_translator(func.node)
        ):
            plural = True
        else:
            continue
        found = list(_jinja_keys(node.args[0]))
        for literal, prefix in found:
            yield Use(literal, plural, node.lineno or 0, prefix)
        if not found:
            yield Use("", plural, node.lineno or 0, dynamic=True)


# ---------------------------------------------------------------------------- Babel


def expand(uses: Iterator[Use], keys: list[str]) -> Iterator[Use]:
    """A prefix use stands for every known key that starts with it."""
    for use in uses:
        if use.dynamic:
            continue
        if not use.prefix:
            yield use
            continue
        for key in keys:
            if key.startswith(use.key):
                yield Use(key, use.plural, use.lineno, note=use.note)


def _babel(uses: Iterator[Use], options: Mapping[str, Any]) -> Iterator[Extracted]:
    texts = _source_texts(options.get("locales"))
    for use in expand(uses, known_keys(texts)):
        comments = ([use.note] if use.note else []) + _comments(use.key, texts)
        if use.plural:
            yield use.lineno, "ngettext", (use.key, use.key), comments
        else:
            yield use.lineno, "gettext", use.key, comments


def _read(fileobj: IO[bytes], options: Mapping[str, Any]) -> str:
    return fileobj.read().decode(str(options.get("encoding", "utf-8")))


def extract_python(
    fileobj: IO[bytes],
    keywords: Collection[str],
    comment_tags: Collection[str],
    options: Mapping[str, Any],
) -> Iterator[Extracted]:
    """Babel extraction method for ``.py`` files (see ``babel.cfg``)."""
    try:
        uses = list(python_uses(_read(fileobj, options)))
    except SyntaxError:
        return
    yield from _babel(iter(uses), options)


def extract_jinja(
    fileobj: IO[bytes],
    keywords: Collection[str],
    comment_tags: Collection[str],
    options: Mapping[str, Any],
) -> Iterator[Extracted]:
    """Babel extraction method for Jinja2 templates (see ``babel.cfg``)."""
    try:
        uses = list(jinja_uses(_read(fileobj, options)))
    except TemplateSyntaxError:
        return
    yield from _babel(iter(uses), options)
