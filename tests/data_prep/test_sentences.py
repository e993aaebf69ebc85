"""The rule-based sentence splitter."""

from __future__ import annotations

import pytest

from data_prep.sentences import split_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        (
            "Mr. Smith met Mrs. Jones and Dr. Who. They talked.",
            ["Mr. Smith met Mrs. Jones and Dr. Who.", "They talked."],
        ),
        (
            "Gen. Grant and Col. Lee rode on. Capt. Ahab did not.",
            ["Gen. Grant and Col. Lee rode on.", "Capt. Ahab did not."],
        ),
        ("The U.S. Government grew. We paid.", ["The U.S. Government grew.", "We paid."]),
        ("Trade with the U.S. The rest followed.", ["Trade with the U.S.", "The rest followed."]),
        (
            "Fruit, e.g. Apples, i.e. Red ones. Next.",
            ["Fruit, e.g. Apples, i.e. Red ones.", "Next."],
        ),
        (
            "It rose 3.5 percent in 1990. Prices fell.",
            ["It rose 3.5 percent in 1990.", "Prices fell."],
        ),
        (
            "See No. 5 and Art. 3 of the law. No. It is wrong.",
            ["See No. 5 and Art. 3 of the law.", "No.", "It is wrong."],
        ),
        (
            "John F. Kennedy spoke. J. R. R. Tolkien wrote.",
            ["John F. Kennedy spoke.", "J. R. R. Tolkien wrote."],
        ),
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("He asked 'why?' Nobody knew.", ["He asked 'why?'", "Nobody knew."]),
        ("It was over (finally.) We went home.", ["It was over (finally.)", "We went home."]),
        ("Apples, pears, etc. The list goes on.", ["Apples, pears, etc.", "The list goes on."]),
        ("Apples, pears, etc. Were sold.", ["Apples, pears, etc. Were sold."]),
        ("Really?! Yes.", ["Really?!", "Yes."]),
        ("Wait... What happened?", ["Wait...", "What happened?"]),
        ("lowercase after a period. stays together", ["lowercase after a period. stays together"]),
        ("We counted 1,234 votes. 1990 was calm.", ["We counted 1,234 votes.", "1990 was calm."]),
        ("  extra   spaces\there.  Next  ", ["extra spaces here.", "Next"]),
        ("", []),
        ("   ", []),
    ],
)
def test_split(text, expected):
    assert split_sentences(text) == expected


def test_sotu_like_paragraph():
    text = (
        "Fellow-Citizens of the Senate and House of Representatives: The Secretary of the "
        "Treasury, Mr. Hamilton, reports a loan of 3,000,000 florins. The U.S. Mint is at work. "
        '"We shall prevail," said he. (Applause.) Thank you.'
    )
    assert split_sentences(text) == [
        "Fellow-Citizens of the Senate and House of Representatives: The Secretary of the "
        "Treasury, Mr. Hamilton, reports a loan of 3,000,000 florins.",
        "The U.S. Mint is at work.",
        '"We shall prevail," said he.',
        "(Applause.)",
        "Thank you.",
    ]
