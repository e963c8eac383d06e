"""WordNet 3.0 for NLTK's METEOR, from the operating system's packages: no download at run time.

Debian's `wordnet-base` and `wordnet-sense-index` hold Princeton's WordNet 3.0 database files (`data.*`,
`index.*`, `*.exc`, `index.sense`), the same files as NLTK's `wordnet` corpus. NLTK's reader also wants a
`lexnames` file (the 45 lexicographer files, WordNet's lexnames(5WN)), which Debian does not ship: it is generated
here from the fixed table below and given to the reader in memory, so nothing is written anywhere.
"""
from __future__ import annotations

import io
import os
import warnings
from functools import lru_cache
from pathlib import Path

DEFAULT_DIR = "/usr/share/wordnet"  # Debian's wordnet-base
ENV_DIR = "WNSEARCHDIR"  # WordNet's own variable for the database folder

# WordNet 3.0 lexicographer files, lexnames(5WN): number, name, syntactic category (1 noun, 2 verb, 3 adj, 4 adv).
LEXNAMES = (
    ["adj.all", "adj.pert", "adv.all", "noun.Tops"]
    + ["noun." + n for n in ("act", "animal", "artifact", "attribute", "body", "cognition", "communication", "event",
                              "feeling", "food", "group", "location", "motive", "object", "person", "phenomenon",
                              "plant", "possession", "process", "quantity", "relation", "shape", "state",
                              "substance", "time")]
    + ["verb." + n for n in ("body", "change", "cognition", "communication", "competition", "consumption",
                              "contact", "creation", "emotion", "motion", "perception", "possession", "social",
                              "stative", "weather")]
    + ["adj.ppl"]
)
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
REQUIRED_FILES = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj",
                  "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc", "index.sense")


class WordNetMissing(RuntimeError):
    """The WordNet 3.0 database is not installed; the message says how to install it."""


def lexnames_text() -> str:
    """The `lexnames` file NLTK's WordNet reader expects: `NN<TAB>name<TAB>category` for the 45 files."""
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def wordnet_dir() -> Path:
    """The WordNet database folder: $WNSEARCHDIR, else Debian's /usr/share/wordnet."""
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


@lru_cache(maxsize=1)
def load_wordnet():
    """NLTK's WordNetCorpusReader over the system's WordNet 3.0 (about 1 s, cached for the process).

    Raises WordNetMissing when a database file is absent or the files are not WordNet 3.0."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = wordnet_dir()
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise WordNetMissing(
            f"WordNet 3.0 not found in {root} (missing {', '.join(missing[:3])}): install Debian's wordnet-base and "
            f"wordnet-sense-index (scripts/setup.sh does), or point {ENV_DIR} at a WordNet 3.0 dict folder"
        )
    # NLTK only opens corpus files under its data path: the database folder is added to it.
    if str(root) not in [str(p) for p in nltk.data.path]:
        nltk.data.path.append(str(root))

    class SystemWordNet(WordNetCorpusReader):
        """NLTK's reader with the generated `lexnames`; the database is WordNet 3.0 itself, so no mapping from
        WordNet 3.0 (which NLTK 3.10 would look for in a downloaded `corpora/wordnet`) is needed."""

        def open(self, fileid):
            if fileid == "lexnames":
                return io.StringIO(lexnames_text())
            return super().open(fileid)

        def map_wn(self, version="wordnet"):
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not used by METEOR
        reader = SystemWordNet(str(root), None)
    if reader.get_version() != "3.0":
        raise WordNetMissing(f"{root} holds WordNet {reader.get_version()}, not 3.0 (the published scores use 3.0)")
    return reader
