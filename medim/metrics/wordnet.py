"""WordNet 3.0 for NLTK's METEOR, read from Debian's ``wordnet-base`` files (no download).

NLTK's :class:`~nltk.corpus.reader.wordnet.WordNetCorpusReader` wants one directory holding the WordNet 3.0
database files plus a ``lexnames`` table. Debian's ``wordnet-base`` installs the database under
``/usr/share/wordnet`` without ``lexnames`` (its content is documented in the ``lexnames(5WN)`` manual page),
and NLTK refuses files reached through symlinks that leave its root. So :func:`load_wordnet` copies the database
files into a medim-managed directory (``$MEDIM_NLTK_DATA/corpora/wordnet``, default
``~/.cache/medim/nltk_data/corpora/wordnet``), writes ``lexnames`` and opens it.

The reader is told that the loaded database *is* WordNet 3.0 (it is), so it skips the sense-key mapping that
only the Open Multilingual WordNet needs (that mapping reads ``index.sense``, which Debian does not ship).
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path

import nltk.data
from nltk.corpus.reader.wordnet import WordNetCorpusReader

DEBIAN_WORDNET = Path("/usr/share/wordnet")
INSTALL_HINT = "run scripts/system-deps.sh (as root: apt-get install -y --no-install-recommends wordnet-base)"
_DATABASE_FILES = (
    tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv"))
    + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))
    + ("cntlist.rev",)
)

_LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
"""The 45 lexicographer file names of WordNet 3.0, in file-number order (``lexnames(5WN)``)."""

_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class WordNetUnavailable(RuntimeError):
    """The WordNet 3.0 database files are missing, so NLTK METEOR cannot be computed."""


class _WordNet30Reader(WordNetCorpusReader):
    """A WordNet 3.0 reader that needs no mapping to WordNet 3.0 (it is the identity)."""

    def map_wn(self, version: str = "wordnet") -> None:
        """No mapping: the loaded database is WordNet 3.0 itself."""
        return None


def nltk_data_dir() -> Path:
    """The medim-managed NLTK data directory (``$MEDIM_NLTK_DATA`` or ``~/.cache/medim/nltk_data``)."""
    configured = os.environ.get("MEDIM_NLTK_DATA")
    return Path(configured) if configured else Path.home() / ".cache" / "medim" / "nltk_data"


def prepare_wordnet(source: Path = DEBIAN_WORDNET, target_root: Path | None = None) -> Path:
    """Copy the WordNet database from ``source`` into ``<target_root>/corpora/wordnet`` and write ``lexnames``.

    Idempotent: files already copied with the same size are kept. Returns the corpus directory.
    Raises :class:`WordNetUnavailable` naming the first missing source file.
    """
    missing = [name for name in _DATABASE_FILES if not (source / name).is_file()]
    if missing:
        raise WordNetUnavailable(
            f"WordNet 3.0 database file {source / missing[0]} is missing ({len(missing)} files missing); "
            f"NLTK METEOR needs it: {INSTALL_HINT}"
        )
    corpus = (target_root or nltk_data_dir()) / "corpora" / "wordnet"
    corpus.mkdir(parents=True, exist_ok=True)
    for name in _DATABASE_FILES:
        src, dst = source / name, corpus / name
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            shutil.copyfile(src, dst)
    lines = [f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)]
    (corpus / "lexnames").write_text("".join(lines))
    return corpus


@functools.cache
def load_wordnet(source: Path = DEBIAN_WORDNET) -> WordNetCorpusReader:
    """A ready NLTK WordNet 3.0 reader over the Debian files (prepared on first use, then cached)."""
    root = nltk_data_dir()
    corpus = prepare_wordnet(source, root)
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))  # NLTK reads corpora only under its data paths
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return _WordNet30Reader(str(corpus), None)
