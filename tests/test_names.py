"""Name validation is pure: no database needed."""

from __future__ import annotations

import re

import pytest

from sa_tenancy import InvalidSchemaName
from sa_tenancy import NamePolicy
from sa_tenancy.names import validate_extra_schema

HOSTILE = [
    'acme"; DROP SCHEMA public CASCADE; --',
    "acme; select 1",
    "acme'",
    'a"b',
    "a b",
    "a" * 64,
    "é" * 40,  # 80 bytes, PostgreSQL would cut it to 62
    "acme\x00",
    "\x00",
    "acme\n",
    "pg_catalog",
    "pg_toast",
    "pg_anything",
    "information_schema",
    "public",
    "",
    "Acme",
    "1acme",
    "acme-corp",
    "ａｃｍｅ",  # fullwidth letters
]


@pytest.mark.parametrize("name", HOSTILE)
def test_default_policy_refuses(name):
    with pytest.raises(InvalidSchemaName):
        NamePolicy().validate(name)


@pytest.mark.parametrize("name", ["acme", "_x", "t1", "a" * 63, "tenant_42"])
def test_default_policy_accepts(name):
    assert NamePolicy().validate(name) == name


@pytest.mark.parametrize("value", [b"acme", 42, None, 1.5, ["acme"], object()])
def test_non_str_refused(value):
    with pytest.raises(InvalidSchemaName, match="must be a str"):
        NamePolicy().validate(value)


def test_hostile_str_subclass_is_used_as_its_plain_value():
    class Hostile(str):
        def __str__(self):
            return "public"

        def __eq__(self, other):
            return True

        __hash__ = str.__hash__

    validated = NamePolicy().validate(Hostile("acme"))
    assert type(validated) is str
    assert validated == "acme"


def test_63_bytes_is_the_limit_in_bytes_not_characters():
    policy = NamePolicy(lambda n: True)
    assert policy.validate("é" * 31 + "a") == "é" * 31 + "a"  # 63 bytes
    with pytest.raises(InvalidSchemaName, match="64 bytes"):
        policy.validate("é" * 32)


def test_widened_policies():
    assert NamePolicy(r"[a-z][a-z0-9-]*").validate("acme-corp") == "acme-corp"
    assert NamePolicy(re.compile(r"[A-Za-z]+")).validate("Acme") == "Acme"
    allow = NamePolicy({"acme", "globex"})
    assert allow.validate("globex") == "globex"
    with pytest.raises(InvalidSchemaName, match="allowed tenants"):
        allow.validate("initech")
    predicate = NamePolicy(lambda n: n.startswith("t_"))
    assert predicate.validate("t_1") == "t_1"
    with pytest.raises(InvalidSchemaName):
        predicate.validate("x_1")


@pytest.mark.parametrize("name", ["pg_catalog", "public", "a\x00b", "é" * 40])
def test_fixed_rules_hold_under_any_policy(name):
    with pytest.raises(InvalidSchemaName):
        NamePolicy(lambda n: True).validate(name)
    with pytest.raises(InvalidSchemaName):
        NamePolicy({name}).validate(name)


def test_regex_must_match_the_whole_name():
    with pytest.raises(InvalidSchemaName):
        NamePolicy(r"[a-z]+").validate("acme;drop")
    with pytest.raises(InvalidSchemaName):
        NamePolicy(r"[a-z]+$").validate("acme\n")


def test_huge_name_error_message_is_bounded():
    with pytest.raises(InvalidSchemaName) as info:
        NamePolicy().validate("x" * 100_000)
    assert len(str(info.value)) < 400


def test_extra_schemas_allow_public_only_among_reserved():
    assert validate_extra_schema("public") == "public"
    for bad in ("pg_catalog", "information_schema", "a\x00"):
        with pytest.raises(InvalidSchemaName):
            validate_extra_schema(bad)


def test_allowlist_must_hold_str():
    with pytest.raises(TypeError):
        NamePolicy({b"acme"})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["a\ud800", "\udfff", "t_\udc80x"])
def test_lone_surrogates_are_refused(name):
    with pytest.raises(InvalidSchemaName, match="lone surrogate"):
        NamePolicy(lambda n: True).validate(name)
