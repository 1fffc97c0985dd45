"""The library never swallows an exception; the ruff rules in docs/cascade.md do what it says."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROAD = {"Exception", "BaseException"}
NOQA_WITH_REASON = re.compile(r"#\s*noqa:[^#]*\bBLE001\b\s*[-:\u2013\u2014]\s*\w")


def _names(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Tuple):
        return [name for elt in node.elts for name in _names(elt)]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    return []


def _reraises(body: list[ast.stmt]) -> bool:
    """A `raise` anywhere in the handler body, not counting nested functions or classes."""
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Raise):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return False


def swallowing_handlers(source: str, filename: str = "<string>") -> list[str]:
    """Every bare `except:` and every broad handler that does not re-raise, as `file:line`.

    A broad handler (`Exception` / `BaseException`, alone or in a tuple) is allowed without a
    re-raise only when its `except` line says `# noqa: BLE001 - <reason>` (the alert-hook
    pattern: the error is reported, and a user hook cannot break a guarded call).
    """
    lines = source.splitlines()
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.ExceptHandler):
            continue
        where = f"{filename}:{node.lineno}"
        if node.type is None:
            found.append(f"{where}: bare `except:`")
            continue
        if not BROAD & set(_names(node.type)) or _reraises(node.body):
            continue
        if NOQA_WITH_REASON.search(lines[node.lineno - 1]):
            continue
        found.append(f"{where}: `except {ast.unparse(node.type)}` does not re-raise")
    return found


PLANTED = {
    "bare": "try:\n    f()\nexcept:\n    pass\n",
    "bare_that_reraises": "try:\n    f()\nexcept:\n    cleanup()\n    raise\n",
    "pass": "try:\n    f()\nexcept Exception:\n    pass\n",
    "return_none": (
        "def g():\n    try:\n        return f()\n    except Exception:\n        return None\n"
    ),
    "tuple": "try:\n    f()\nexcept (ValueError, Exception) as e:\n    log(e)\n",
    "base": "try:\n    f()\nexcept BaseException:\n    log()\n",
    "builtins_attr": "import builtins\ntry:\n    f()\nexcept builtins.Exception:\n    x = 1\n",
    "raise_only_in_nested_def": (
        "try:\n    f()\nexcept Exception:\n    def later():\n        raise\n    keep(later)\n"
    ),
    "noqa_without_reason": "try:\n    f()\nexcept Exception:  # noqa: BLE001\n    log()\n",
    "nested_in_class": (
        "class A:\n    def m(self):\n        try:\n            f()\n"
        "        except Exception:\n            return 0\n"
    ),
}

ALLOWED = {
    "reraise": "try:\n    f()\nexcept Exception:\n    log()\n    raise\n",
    "raise_from": "try:\n    f()\nexcept Exception as exc:\n    raise Wrapped('x') from exc\n",
    "conditional_reraise": (
        "try:\n    f()\nexcept BaseException as exc:\n    if bad(exc):\n        raise\n"
    ),
    "specific": "try:\n    f()\nexcept ValueError:\n    pass\n",
    "noqa_with_reason": (
        "try:\n    hook()\nexcept Exception as exc:  # noqa: BLE001 - reported, never breaks the "
        "call\n    report(exc)\n"
    ),
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_the_checker_catches_a_planted_swallow(name: str) -> None:
    found = swallowing_handlers(PLANTED[name], name)
    assert len(found) == 1, found
    assert found[0].startswith(f"{name}:")


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_the_checker_allows_handlers_that_reraise_or_explain(name: str) -> None:
    assert swallowing_handlers(ALLOWED[name], name) == []


def test_the_library_never_swallows_an_exception() -> None:
    files = sorted((ROOT / "src").rglob("*.py"))
    assert len(files) > 10
    found = [
        problem
        for path in files
        for problem in swallowing_handlers(
            path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))
        )
    ]
    assert found == [], "\n".join(found)


# -- docs/cascade.md: the ruff rules really catch the "before" and pass the "after" -------------

CASCADE_RULES = ("BLE001", "E722", "S110", "S112", "TRY002", "TRY201", "TRY203", "TRY400")
BLOCK = re.compile(r"```python\n# ruff: (expect [A-Z0-9, ]+|clean)\n(.*?)```", re.DOTALL)


def _ruff() -> str:
    here = Path(sys.executable).with_name("ruff")
    found = str(here) if here.exists() else shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed in this environment")
    return found


def _ruff_codes(source: str) -> set[str]:
    result = subprocess.run(
        [
            _ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
            "--output-format", "json", "--exit-zero", "--stdin-filename", "example.py", "-",
        ],
        input=source, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return {item["code"] for item in json.loads(result.stdout)}


RULE_TRIGGERS = {
    "BLE001": "def f(g):\n    try:\n        return g()\n    except Exception:\n        return 0\n",
    "E722": "def f(g):\n    try:\n        g()\n    except:\n        log()\n",
    "S110": "def f(g):\n    try:\n        g()\n    except Exception:\n        pass\n",
    "S112": (
        "def f(gs):\n    for g in gs:\n        try:\n            g()\n"
        "        except Exception:\n            continue\n"
    ),
    "TRY002": "def f():\n    raise Exception('x')\n",
    "TRY201": "def f(g):\n    try:\n        g()\n    except ValueError as e:\n        raise e\n",
    "TRY203": "def f(g):\n    try:\n        g()\n    except ValueError:\n        raise\n",
    "TRY400": (
        "import logging\n\n\ndef f(g):\n    try:\n        g()\n    except ValueError:\n"
        "        logging.error('failed')\n        raise\n"
    ),
}


@pytest.mark.parametrize("rule", CASCADE_RULES)
def test_the_cascade_rules_are_enabled_in_this_project(rule: str) -> None:
    assert rule in _ruff_codes(RULE_TRIGGERS[rule])


def test_the_ruff_examples_in_the_cascade_page_behave_as_documented() -> None:
    text = (ROOT / "docs" / "cascade.md").read_text(encoding="utf-8")
    blocks = BLOCK.findall(text)
    assert len(blocks) >= 3
    for header, code in blocks:
        codes = _ruff_codes(code) & set(CASCADE_RULES)
        if header == "clean":
            assert codes == set(), (code, codes)
        else:
            expected = {c.strip() for c in header.removeprefix("expect ").split(",")}
            assert codes == expected, (code, codes)
