"""Title search over a catalogue: what a person types to find a movie, matched in pure Python (no Redis, no
heavy imports: the API process answers ``GET /v1/movies?q=`` with it).

Normalisation (``normalise``): Unicode NFKD with combining marks dropped ("Amélie" -> "amelie"), case folded,
apostrophes removed ("Schindler's" -> "schindlers"), "&" read as "and", every other non-alphanumeric character
a space. A MovieLens title is split into its name, its alternative names in parentheses and its year:

    "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
        names: "the city of lost children", "la cite des enfants perdus"   (a trailing ", The" goes in front)
        year:  1995

A movie's tokens are those of every name (as written and with the article moved) plus its year. A query
matches a movie when each of its tokens is one of the movie's tokens, the last one as a prefix (so "toy sto"
matches while typing). A year in the query ("toy story 1995", "toy story (1995)") is just another token, so it
keeps only the movies of that year unless the title itself holds that number ("1984", "2001: A Space Odyssey").

Ranking, best first: an exact match (the query, or the query less a token that is the movie's year, equals
one of its names), then every other match; within each, movies of a year the query names first, then the shorter title,
then catalogue order.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from dataclasses import dataclass

MAX_QUERY_CHARS = 200

_YEAR_AT_END = re.compile(r"\(\s*(\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\s*\)\s*$")
_PARENTHESES_AT_END = re.compile(r"\(([^()]*)\)\s*$")
_ARTICLES = frozenset(
    {
        "the", "a", "an", "le", "la", "les", "l", "el", "los", "las", "lo", "il", "gli", "i", "un", "une", "uno",
        "una", "das", "der", "die", "den", "det", "de", "het", "ein", "eine", "en", "o", "os",
    }
)  # fmt: skip
_TRAILING_ARTICLE = re.compile(r"^(.*\S),\s*([^\s,]+'?)\s*$")
_APOSTROPHES = re.compile(r"['\u2019\u2018`\u00b4]")
_NOT_ALNUM = re.compile(r"[\W_]+")
_YEAR_TOKEN = re.compile(r"^(18[89]\d|19\d\d|20\d\d|2100)$")


def normalise(text: str) -> str:
    """Lower case, no accents, no punctuation, single spaces: the form every comparison is made in."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    plain = _APOSTROPHES.sub("", plain.replace("&", " and "))
    return _NOT_ALNUM.sub(" ", plain).strip()


def tokens(text: str) -> list[str]:
    return normalise(text).split()


def _front_article(name: str) -> str | None:
    """ "Matrix, The" -> "The Matrix" (None when the name does not end with an article after a comma)."""
    m = _TRAILING_ARTICLE.match(name)
    if m is None or normalise(m.group(2)) not in _ARTICLES:
        return None
    article = m.group(2)
    return f"{article}{'' if article.endswith(chr(39)) else ' '}{m.group(1)}"


@dataclass(frozen=True)
class ParsedTitle:
    names: tuple[str, ...]  # normalised: the name with its article in front, as written, alternatives
    year: int | None


def parse_title(title: str) -> ParsedTitle:
    """A MovieLens title's names (normalised) and year."""
    rest, year = title.strip(), None
    m = _YEAR_AT_END.search(rest)
    if m is not None:
        year, rest = int(m.group(1)), rest[: m.start()].rstrip()
    alternatives = []
    while (p := _PARENTHESES_AT_END.search(rest)) is not None and p.start() > 0:
        alternatives.append(p.group(1))
        rest = rest[: p.start()].rstrip()
    names: list[str] = []
    for name in (rest, *reversed(alternatives)):
        front = _front_article(name)
        for variant in (front, name):
            if variant is not None and (n := normalise(variant)) and n not in names:
                names.append(n)
    return ParsedTitle(names=tuple(names), year=year)


def year_of(title: str) -> int | None:
    m = _YEAR_AT_END.search(title)
    return int(m.group(1)) if m else None


def query_tokens(query: str) -> list[str]:
    """The tokens of a query (empty when it has no letter or digit)."""
    return tokens(query[:MAX_QUERY_CHARS])


class TitleIndex:
    """Normalised titles of a catalogue (its order) and an inverted index of their tokens: built once per
    catalogue and kept (``Catalogue.title_index``, shared/logic/catalogue.py)."""

    def __init__(self, titles: list[str]) -> None:
        self.titles = titles
        self.parsed = [parse_title(t) for t in titles]
        postings: dict[str, list[int]] = {}
        for row, p in enumerate(self.parsed):
            words = {w for name in p.names for w in name.split()}
            if p.year is not None:
                words.add(str(p.year))
            for w in words:
                postings.setdefault(w, []).append(row)
        self._postings = {w: frozenset(rows) for w, rows in postings.items()}
        self._vocabulary = sorted(postings)

    def __len__(self) -> int:
        return len(self.titles)

    def _rows_with_prefix(self, prefix: str) -> set[int]:
        rows: set[int] = set()
        i = bisect_left(self._vocabulary, prefix)
        while i < len(self._vocabulary) and self._vocabulary[i].startswith(prefix):
            rows |= self._postings[self._vocabulary[i]]
            i += 1
        return rows

    def search(self, query: str, limit: int) -> list[int]:
        """Catalogue rows of the best ``limit`` matches of ``query``, best first (see the module docstring)."""
        words = query_tokens(query)
        if not words or limit <= 0:
            return []
        candidates: set[int] | None = None
        for w in sorted(set(words[:-1]), key=lambda w: len(self._postings.get(w, ()))):
            rows = self._postings.get(w, frozenset())
            candidates = set(rows) if candidates is None else candidates & rows
            if not candidates:
                return []
        last = self._rows_with_prefix(words[-1])
        candidates = last if candidates is None else candidates & last
        years = {int(w) for w in words if _YEAR_TOKEN.match(w)}
        whole = " ".join(words)

        def rank(row: int) -> tuple[int, int, int, int]:
            p = self.parsed[row]
            rest = " ".join(w for w in words if p.year is None or w != str(p.year))
            exact = whole in p.names or (bool(rest) and rest in p.names)
            year_hit = not years or p.year in years
            return (0 if exact else 1, 0 if year_hit else 1, len(self.titles[row]), row)

        return sorted(candidates, key=rank)[:limit]
