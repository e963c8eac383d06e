"""The model family a user names: one reading for every GeoVLM algorithm and the engine connection."""
from __future__ import annotations

from ..core.profiles import family_names, get_profile


def family_of(value, numbers: bool = False) -> str:
    """The family name (one of `core.profiles.family_names()`) that `value` stands for: a name or alias as
    `core.profiles.get_profile` reads it ("geochat", "LLaVA-1.5"), or a family's title ("GeoChat",
    "Qwen2.5-VL"), in any case; with `numbers`, also an index in `family_names()` (an int or digits, as
    `geovlm:parseanswers`'s list gives it). Raises ValueError in one line listing the names."""
    names = family_names()
    text = str(value).strip()
    if numbers and text.isdigit() and int(text) < len(names):
        return names[int(text)]
    try:
        return get_profile(text).name
    except ValueError:
        pass
    for name in names:
        if text.lower() == get_profile(name).title.lower():
            return name
    more = f" (or its number, 0 to {len(names) - 1})" if numbers else ""
    raise ValueError(f"unknown model family {text!r}: one of {', '.join(names)}{more}")
