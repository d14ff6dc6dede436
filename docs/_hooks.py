"""MkDocs hooks for danga's site (see ``hooks:`` in mkdocs.yml).

danga's docstrings are Google style, with Sphinx roles such as ``:class:`Loop``` for
cross-references (they read well in ``help()`` and in editors). mkdocstrings renders
such a role as the literal text ``:class:`` followed by the code span; this hook drops
the role prefix so that only the code span remains.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj|const):(?=<code)")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Remove Sphinx role prefixes in front of code spans."""
    return _ROLE.sub("", html)
