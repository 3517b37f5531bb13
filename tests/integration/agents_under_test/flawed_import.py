"""An agent module that fails as it is imported (a missing dependency of the team's code)."""

from __future__ import annotations

raise ImportError("No module named 'harbour_crm'")
