"""The policy file's schema and patterns: strict, every mistake named by file and field."""

from __future__ import annotations

import pytest

from steer_serve.policy.gate import key_hash
from steer_serve.policy.loader import PolicyError, read_policy
from steer_serve.policy.matching import check_pattern, matches
from steer_serve.policy.model import Policy, parse_layers

HASH = "ab" * 32


def _write(tmp_path, text: str):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("pattern, name, digest, expected", [
    ("gloomy", "gloomy", None, True), ("gloomy", "gloomy2", None, False),
    ("gloomy*", "gloomy_pca", None, True), ("gl?omy", "gloomy", None, True), ("[gf]*", "formal", None, True),
    ("[!g]*", "gloomy", None, False), (f"sha256:{HASH}", "anything", HASH, True),
    (f"sha256:{HASH}", "anything", "cd" * 32, False), (f"sha256:{HASH}", "anything", None, False),
])
def test_names_globs_and_content_hashes_match(pattern, name, digest, expected) -> None:
    assert matches(check_pattern(pattern), name, digest) is expected


@pytest.mark.parametrize("pattern, fragment", [
    ("gl[oomy", "bad glob"), ("gl]*", "bad glob"), ("a/*", "bad glob"), ("sha256:xyz", "content hash"),
    ("../x", "not a library name"), ("sha256:" + "AB" * 32, "content hash"),
])
def test_bad_patterns_are_refused(pattern, fragment) -> None:
    with pytest.raises(ValueError, match=fragment):
        check_pattern(pattern)


def test_layers_and_ranges() -> None:
    assert list(parse_layers(3)) == [3] and list(parse_layers("6-8")) == [6, 7, 8]
    for bad in ("8-6", "x", "1-2-3", -1):
        with pytest.raises(ValueError):
            parse_layers(bad)


def test_a_full_file_loads_and_callers_are_found_by_key_hash(tmp_path) -> None:
    path = _write(tmp_path, f"""
default: {{inline_vectors: false, kinds: [add], layers: [1, "3-4"], max_abs_scale: 2, max_dose: 0.5}}
callers:
  research: {{keys_sha256: ["{key_hash('k1')}"], max_interventions: 3, override_experiments: false}}
arms: {{kinds: [add, ablate]}}
""")
    policy = read_policy(path)
    assert policy.rule_for(key_hash("k1"))[0] == "research"
    assert policy.rule_for(key_hash("other"))[0] == "default" and policy.rule_for(None)[0] == "default"
    assert policy.default.allowed_layers() == {1, 3, 4}
    assert policy.arms_rule()[0] == "arms"


@pytest.mark.parametrize("text, fragment", [
    ("default: {inline_vector: false}", "default.inline_vector: Extra inputs are not permitted"),
    ("default: {inline_vectors: 'no'}", "default.inline_vectors: Input should be a valid boolean"),
    ("default: {vectors: {allow: ['gl[oomy']}}", "default.vectors.allow: Value error, [0] bad glob 'gl[oomy'"),
    ("default: {kinds: [add, steer]}", "default.kinds.1"),
    ("default: {max_dose: 0}", "default.max_dose: Value error, max_dose must be a finite number > 0"),
    ("default: {max_abs_scale: .inf}", "default.max_abs_scale"),
    ("default: {max_interventions: 0}", "default.max_interventions"),
    ("default: {layers: ['6-']}", "default.layers"),
    ("default: {observe: [residual]}", "unknown observe field 'residual' (this server knows: capture, probes)"),
    ("callers: {}", "default: Field required"),
    ("default: {}\ncallers: {bob: {}}", "callers.bob.keys_sha256: Field required"),
    ("default: {}\ncallers: {bob: {keys_sha256: [my-secret-key]}}", "write the hash of the key, never the key itself"),
    (f"default: {{}}\ncallers: {{Bob: {{keys_sha256: ['{HASH}']}}}}", "caller name 'Bob'"),
    (f"default: {{}}\ncallers: {{default: {{keys_sha256: ['{HASH}']}}}}", "caller name 'default'"),
    (f"default: {{}}\ncallers: {{a: {{keys_sha256: ['{HASH}']}}, b: {{keys_sha256: ['{HASH}']}}}}",
     "callers.b.keys_sha256: key hash also listed under callers.a"),
    ("default: [", "not valid YAML"),
    ("- default", "must be a mapping"),
])
def test_mistakes_name_the_file_and_field(tmp_path, text: str, fragment: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        read_policy(path)
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value), str(info.value)


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        read_policy(tmp_path / "nope.yaml")


def test_omitted_fields_do_not_restrict() -> None:
    rule = Policy.model_validate({"default": {}}).default
    assert rule.inline_vectors and rule.kinds is None and rule.layers is None and rule.max_dose is None
    assert rule.vectors.allow == ["*"] and rule.observe == []
