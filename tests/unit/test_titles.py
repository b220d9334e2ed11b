"""Title search (shared/ml/titles.py): normalisation, MovieLens title parsing, matching and ranking."""

from __future__ import annotations

import pytest

from shared.ml.titles import TitleIndex, normalise, parse_title, query_tokens, year_of

CATALOGUE = [
    "Toy Story 2 (1999)",
    "Toy Story (1995)",
    "Toy Story 3 (2010)",
    "Matrix Reloaded, The (2003)",
    "Matrix, The (1999)",
    "Animatrix, The (2003)",
    "Amelie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
    "Amélie from Montmartre (1990)",
    "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
    "Schindler's List (1993)",
    "Spider-Man (2002)",
    "1984 (Nineteen Eighty-Four) (1984)",
    "Dune (1984)",
    "Black Mirror",
    "Death Note: Desu nôto (2006–2007)",
    "Story of Toys, A (1995)",
]


@pytest.fixture(scope="module")
def index() -> TitleIndex:
    return TitleIndex(CATALOGUE)


def found(index: TitleIndex, query: str, limit: int = 10) -> list[str]:
    return [CATALOGUE[r] for r in index.search(query, limit)]


def test_normalise_drops_case_accents_and_punctuation() -> None:
    assert normalise("Amélie") == "amelie"
    assert normalise("  Schindler's   LIST!! ") == "schindlers list"
    assert normalise("Spider-Man: Homecoming") == "spider man homecoming"
    assert normalise("Tom & Jerry") == "tom and jerry"
    assert normalise("Ｔｏｙ") == "toy"  # NFKD: full-width letters
    assert query_tokens("?!  ...") == []


def test_parse_title_names_and_year() -> None:
    p = parse_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)")
    assert p.year == 1995
    assert p.names[0] == "the city of lost children"
    assert "la cite des enfants perdus" in p.names
    assert parse_title("Matrix, The (1999)").names[0] == "the matrix"
    assert parse_title("Black Mirror").year is None
    assert parse_title("Death Note: Desu nôto (2006–2007)").year == 2006
    assert year_of("Toy Story (1995)") == 1995 and year_of("Black Mirror") is None


def test_accents_either_way(index: TitleIndex) -> None:
    assert found(index, "amelie")[0].startswith("Amelie (Fabuleux")
    assert found(index, "AMÉLIE")[0].startswith("Amelie (Fabuleux")
    assert "Amélie from Montmartre (1990)" in found(index, "amelie")
    assert found(index, "cite des enfants") == ["City of Lost Children, The (Cité des enfants perdus, La) (1995)"]


def test_the_matrix_finds_the_movielens_title(index: TitleIndex) -> None:
    hits = found(index, "the matrix")
    assert hits[0] == "Matrix, The (1999)"  # the exact title first
    assert "Matrix Reloaded, The (2003)" in hits
    assert "Animatrix, The (2003)" not in hits  # a token, not a substring
    assert found(index, "Matrix, The")[0] == "Matrix, The (1999)"


def test_exact_title_first_then_shorter(index: TitleIndex) -> None:
    assert found(index, "toy story") == ["Toy Story (1995)", "Toy Story 2 (1999)", "Toy Story 3 (2010)"]
    assert found(index, "Toy Story!")[0] == "Toy Story (1995)"


def test_year_aware(index: TitleIndex) -> None:
    assert found(index, "toy story 1995") == ["Toy Story (1995)"]
    assert found(index, "toy story (1995)") == ["Toy Story (1995)"]
    assert found(index, "toy story 1999") == ["Toy Story 2 (1999)"]
    assert found(index, "toy story 2010") == ["Toy Story 3 (2010)"]
    assert found(index, "the matrix 1999") == ["Matrix, The (1999)"]
    # A number that is the title itself is not only a year: "1984" the film first, then the films of 1984.
    assert found(index, "1984")[:2] == ["1984 (Nineteen Eighty-Four) (1984)", "Dune (1984)"]
    # Only films of that year, the shorter title first.
    assert found(index, "story 1995") == ["Toy Story (1995)", "Story of Toys, A (1995)"]


def test_prefix_while_typing(index: TitleIndex) -> None:
    assert found(index, "toy sto")[0] == "Toy Story (1995)"
    assert found(index, "toy s")[0] == "Toy Story (1995)"
    assert found(index, "schindlers l") == ["Schindler's List (1993)"]
    assert found(index, "schindler's list") == ["Schindler's List (1993)"]
    assert found(index, "spider man") == ["Spider-Man (2002)"]
    assert found(index, "sto toy") == []  # only the last word is a prefix


def test_limit_and_no_match(index: TitleIndex) -> None:
    assert len(found(index, "t", limit=3)) == 3
    assert found(index, "nothing like this") == []
    assert found(index, "   ") == []
    assert found(index, "toy", limit=0) == []
    assert found(index, "black mirror") == ["Black Mirror"]


def test_ties_keep_catalogue_order() -> None:
    index = TitleIndex(["Twin (2000)", "Twix (2000)", "Twin (2000)"])
    assert index.search("tw", 10) == [0, 1, 2]
