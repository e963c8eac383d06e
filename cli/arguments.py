"""The `geovlm` argument parser: options whose value may begin with '-' take it after a space too.

argparse reads a word that begins with '-' as an option unless it looks like a negative number (`-5`, `-.5`):
`--window -5,10,200,200`, `--bands -1,2,3`, `--temperature -1e-3` or `--api-key -x7...` fail with "expected one
argument", and only the `--option=VALUE` form works. `CommandParser` lets such options say so
(`dash_value=True` on `add_argument`; options with `type=int` or `type=float` say so by default, as numbers may
be negative) and joins `--option VALUE` into `--option=VALUE` for them before argparse reads the words. It joins
only where the next word is not one of the command's own options, so a forgotten value (`--window --out x`) is
still reported by argparse; abbreviations (`--win`) are joined as argparse would expand them; nothing after `--`
is touched.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence


class ExamplesFormatter(argparse.HelpFormatter):
    """argparse's help layout, except that a text of several lines (an epilog of examples) keeps its lines as
    written, so that each example can be pasted; one-line texts (descriptions) are wrapped as argparse wraps
    them."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class CommandParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` (its subcommand parsers are of this class too, as `add_subparsers` makes
    them of the parser's class) whose options marked `dash_value` take a value beginning with '-' after a
    space: see the module's docstring."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", ExamplesFormatter)
        super().__init__(*args, **kwargs)
        self.dash_value_options: List[str] = []  # option strings whose value may begin with '-'

    def add_argument(self, *names, dash_value: Optional[bool] = None, **kwargs):
        """`argparse.ArgumentParser.add_argument`, plus `dash_value`: whether the option's one value may begin
        with '-' (default: True for `type=int` and `type=float`, else False)."""
        action = super().add_argument(*names, **kwargs)
        if dash_value is None:
            dash_value = kwargs.get("type") in (int, float)
        if dash_value and action.option_strings and action.nargs is None:
            self.dash_value_options += action.option_strings
        return action

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace=None):
        words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self.joined(words), namespace)

    def joined(self, words: List[str]) -> List[str]:
        """`words` with each `OPTION VALUE` pair of a dash-value option whose VALUE begins with '-' (and is not
        one of this parser's options) written as `OPTION=VALUE`; words after `--` as they are."""
        out: List[str] = []
        i = 0
        while i < len(words):
            word = words[i]
            if word == "--":
                return out + words[i:]
            following = words[i + 1] if i + 1 < len(words) else None
            if (following is not None and following.startswith("-") and following != "--"
                    and self._dash_value_option(word) and self._option_named(following) is None):
                out.append(f"{word}={following}")
                i += 2
                continue
            out.append(word)
            i += 1
        return out

    def _option_named(self, word: str) -> Optional[str]:
        """The option string `word` names (itself, or the one long option it abbreviates), else None."""
        name = word.split("=", 1)[0]
        options = self._option_string_actions  # argparse's own table of this parser's option strings
        if name in options:
            return name
        if self.allow_abbrev and name.startswith("--"):
            matches = [option for option in options if option.startswith(name)]
            if len(matches) == 1:
                return matches[0]
        return None

    def _dash_value_option(self, word: str) -> bool:
        return "=" not in word and self._option_named(word) in self.dash_value_options
