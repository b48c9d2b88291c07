"""Identifier validation and link-token derivation (known answers computed with openssl)."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkage.tokens import IdentifierError, LinkageKey, nhs_number_is_valid, normalise_identifier

KEY = LinkageKey(version=1, key=bytes(range(32)))


@pytest.mark.parametrize("number", ["9434765919", "9991000003", "9991000011", "4010232137"])
def test_valid_nhs_numbers_pass_modulus_11(number: str) -> None:
    assert nhs_number_is_valid(number)


@pytest.mark.parametrize(
    "number",
    ["9434765918", "943476591", "94347659190", "94347659a9", "", "1234567890"],
)
def test_invalid_nhs_numbers_fail(number: str) -> None:
    assert not nhs_number_is_valid(number)


def test_check_digit_of_ten_is_never_valid() -> None:
    # 000000040x: weighted sum 4 x 3 = 12, remainder 1, check digit 10: no number is valid.
    assert not any(nhs_number_is_valid(f"000000040{d}") for d in "0123456789")


def test_nhs_number_is_normalised_before_hashing() -> None:
    assert normalise_identifier("NHS", "943 476 5919") == "nhs:9434765919"
    assert normalise_identifier("nhs", "943-476-5919") == "nhs:9434765919"
    assert KEY.token("nhs", "943 476 5919") == KEY.token("nhs", "9434765919")


def test_token_known_answers() -> None:
    assert KEY.token("nhs", "9434765919").hex() == ("80fa1f2c6bbbca84080d04a5742d0f3fe290a37c25e7a51191fa4952304dbf9d")
    assert KEY.token("la-csc", "  CS   001234 ").hex() == (
        "2d38164a66ffd04ca130275bf30c0cf048975a62ae5eb8e6be157dd89b549df7"
    )


def test_another_federation_key_gives_unrelated_tokens() -> None:
    other = LinkageKey(version=1, key=bytes(32))
    assert other.token("nhs", "9434765919") != KEY.token("nhs", "9434765919")


@pytest.mark.parametrize(
    ("scheme", "value", "message"),
    [
        ("nhs", "9434765918", "modulus-11"),
        ("", "123", "scheme"),
        ("NHS Number", "9434765919", "scheme"),
        ("la-csc", "   ", "1-128"),
        ("la-csc", "x" * 129, "1-128"),
    ],
)
def test_bad_identifiers_are_refused_without_echoing_them(scheme: str, value: str, message: str) -> None:
    with pytest.raises(IdentifierError, match=message) as raised:
        KEY.token(scheme, value)
    if value.strip():
        assert value.strip() not in str(raised.value)


def test_key_round_trips_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "linkage.key"
    KEY.save(path)
    assert LinkageKey.load(path) == KEY
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_identifier_of_128_characters_is_accepted() -> None:
    assert normalise_identifier("la-csc", "x" * 128) == "la-csc:" + "x" * 128
