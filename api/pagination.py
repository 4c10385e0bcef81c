"""Page-number pagination shared by the list endpoints."""
from __future__ import annotations

import math


def window(args: dict) -> tuple[int, int]:
    """(limit, offset) for ``page``/``per_page`` query arguments."""
    return args["per_page"], (args["page"] - 1) * args["per_page"]


def page_of(items: list, total: int, args: dict) -> dict:
    return {"items": items, "page": {"page": args["page"], "per_page": args["per_page"], "total": total,
                                     "pages": max(1, math.ceil(total / args["per_page"]))}}
