"""The catalog's handlers only adapt HTTP: no SQL and no authorisation rule of their own (issue 10's acceptance).

The handlers' source is read with :mod:`ast`: SQL in a string (docstrings aside), a query sent on a connection,
a store built, a condition on a role or on who the viewer is, or a call of the access module's predicates is
reported with its line. Samples of each kind show that the check finds what it looks for.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

HANDLERS = Path(__file__).resolve().parents[3] / "services" / "catalog" / "handlers"

_SQL = re.compile(
    r"\bselect\b.+\bfrom\b|\binsert\s+into\b|\bupdate\s+\w+\s+set\b|\bdelete\s+from\b|\bwhere\s+\w+(\.\w+)?\s*(=|<|>|in\b|is\b)",
    re.IGNORECASE | re.DOTALL,
)
_QUERY_METHODS = {"fetch", "fetchrow", "fetchval", "execute", "executemany", "copy_records_to_table", "cursor"}
_WHO = {"role", "is_admin", "is_anonymous", "user_id", "username"}
"""Names that, tested in a condition, make the handler decide who may do what."""
_ACCESS_PREDICATES = {"role_in", "is_pi", "may_manage", "can_see_product", "visible_condition", "programs_visible_to"}


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the string constants that are docstrings (words for people, not SQL)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _names_in(node: ast.AST) -> set[str]:
    return {
        n.attr if isinstance(n, ast.Attribute) else n.id
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute | ast.Name)
    }


def _string_parts(node: ast.JoinedStr) -> str:
    """An f-string's literal text, its replacement fields as ``?``."""
    return "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "?" for v in node.values)


def violations(source: str) -> list[str]:
    """What in ``source`` is SQL or an authorisation rule, one line each."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if _SQL.search(node.value):
                found.append(f"{where}: SQL in a string: {node.value[:60]!r}")
        elif isinstance(node, ast.JoinedStr) and _SQL.search(_string_parts(node)):
            found.append(f"{where}: SQL in an f-string: {_string_parts(node)[:60]!r}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if isinstance(func, ast.Attribute) and name in _QUERY_METHODS:
                found.append(f"{where}: a query sent from a handler ({name})")
            elif name.endswith(("Store", "Queries")):
                found.append(f"{where}: a storage class used by a handler ({name})")
            elif name in _ACCESS_PREDICATES:
                found.append(f"{where}: an access predicate weighed by a handler ({name})")
        elif isinstance(node, ast.If | ast.IfExp | ast.While | ast.Assert):
            decided = _names_in(node.test) & _WHO
            if decided:
                found.append(f"{where}: a condition on who asks ({', '.join(sorted(decided))})")
        elif isinstance(node, ast.Compare):
            decided = _names_in(node) & {"role"}
            if decided:
                found.append(f"{where}: a comparison of roles")
    return found


@pytest.mark.parametrize("path", sorted(HANDLERS.glob("*.py")), ids=lambda p: p.name)
def test_handlers_have_no_sql_and_no_authorisation_rule(path: Path) -> None:
    assert violations(path.read_text()) == []


@pytest.mark.parametrize(
    "sample",
    [
        'await conn.fetchval("SELECT coalesce(max(seq), 0) FROM products")',
        'sql = f"UPDATE api_tokens SET revoked_at = now() WHERE user_id = {user}"',
        'q = "delete from program_members where mission = $1"',
        "queries = ProductQueries(conn)",
        "program = await ProgramStore(conn).get(mission, propid)",
        "role = await role_in(conn, viewer, mission, propid)",
        "if program is None or (role is None and not viewer.is_admin):\n    raise Refused()",
        "if not viewer.is_admin:\n    raise Refused()",
        "if viewer.is_anonymous:\n    raise Refused()",
        'allowed = role in ("pi", "coi")',
        'assert role == "pi"',
    ],
)
def test_the_check_finds_sql_and_rules(sample: str) -> None:
    assert violations(sample), sample


def test_words_for_people_are_not_sql() -> None:
    source = '"""Select the products from a search, and update the page."""\nmessage = "the token is revoked"\n'
    assert violations(source) == []
