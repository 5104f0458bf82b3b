"""What every page must pass in the browser: axe-core finds nothing, nothing is off-screen.

axe-core comes from npm into ``tests/web/axe`` (``npm ci`` there; ``.ci/run`` does it) and is
injected into the page under test with ``add_script_tag``; without it the tests are skipped
and say how to install it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

AXE = Path(__file__).parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"


def axe_violations(page: Any) -> list[str]:
    """axe-core's violations on the page as it is now (rule id, impact and the first nodes)."""
    if not AXE.is_file():
        pytest.skip(f"axe-core is not installed at {AXE}; run `npm ci` in tests/web/axe")
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + "; ".join(" ".join(n["target"]) for n in v["nodes"][:3])
        for v in found
    ]


def overflow(page: Any) -> list[str]:
    """Elements that reach past the right edge of the window (a phone would hide them)."""
    return list(
        page.evaluate(
            """() => {
            const w = document.documentElement.clientWidth, out = [];
            if (document.documentElement.scrollWidth > w + 1)
              out.push('page is ' + document.documentElement.scrollWidth + 'px wide for ' + w);
            for (const el of document.querySelectorAll('main *, header *')) {
              const r = el.getBoundingClientRect();
              if (r.width && r.right > w + 1 && !el.closest('.scroll'))
                out.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + ' ends at '
                         + Math.round(r.right) + 'px');
            }
            return out.slice(0, 5);
        }"""
        )
    )


def check_page(page: Any, where: str = "") -> None:
    """Zero axe violations and nothing off-screen, with a message that names the page."""
    label = where or page.url
    problems = axe_violations(page)
    assert not problems, f"axe on {label}:\n" + "\n".join(problems)
    wide = overflow(page)
    assert not wide, f"off-screen on {label} at {page.viewport_size}: " + ", ".join(wide)
