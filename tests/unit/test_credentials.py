"""Pull secrets and credential matching, rule for rule as the kubelet does it."""

from __future__ import annotations

import base64
import io
import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanqueue import credentials, errors, images

CANARY = "canary-pw-7f3a9c"  # a password that must never show up in any output
CANARY_TOKEN = "canary-token-5d1e"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def config(auths: dict[str, Any]) -> str:
    return json.dumps({"auths": auths})


def cred(registry: str, username: str = "u", source: str = "ns/s") -> credentials.Credential:
    key = credentials.normalize_key(registry)
    assert key is not None
    return credentials.Credential(
        registry=key, username=username, password=CANARY, source=source, key=registry
    )


def secret(
    name: str,
    payload: str,
    *,
    type_: str = credentials.SECRET_TYPE_DOCKERCONFIGJSON,
    key: str = ".dockerconfigjson",
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team-a", "name": name},
        "type": type_,
        "data": {key: b64(payload)},
    }


def users(found: list[credentials.Credential]) -> list[str]:
    return [c.username for c in found]


def matching(image: str, *keys: str) -> list[str]:
    """Registry keys (as written) that match ``image``, in kubelet order."""
    creds = [cred(k, username=k) for k in keys]
    return users(credentials.match(images.parse(image), creds))


# --- reading entries ------------------------------------------------------------------------


def test_dockerconfigjson_entries_are_read_in_written_order() -> None:
    found = credentials.parse_dockerconfig(
        config(
            {
                "r.io": {"username": "a", "password": CANARY, "email": "a@x"},
                "https://q.io/v2/": {"username": "b", "password": "pb"},
            }
        ),
        source="cfg.json",
    )
    assert [(c.registry, c.username, c.key, c.source) for c in found] == [
        ("r.io", "a", "r.io", "cfg.json"),
        ("q.io", "b", "https://q.io/v2/", "cfg.json"),
    ]
    assert found[0].password == CANARY
    assert found[0].email == "a@x"


def test_legacy_dockercfg_has_no_auths_wrapper() -> None:
    found = credentials.parse_dockerconfig(
        json.dumps({"https://r.io": {"username": "a", "password": CANARY}}), source="f"
    )
    assert [(c.registry, c.username, c.password) for c in found] == [("r.io", "a", CANARY)]


def test_auth_field_overrides_username_and_password() -> None:
    entry = {"username": "ignored", "password": "ignored", "auth": b64(f"real:{CANARY}")}
    (found,) = credentials.parse_dockerconfig(config({"r.io": entry}), source="f")
    assert (found.username, found.password) == ("real", CANARY)


def test_unpadded_base64_auth_is_accepted() -> None:
    padded = b64(f"ab:{CANARY}x")
    auth = padded.rstrip("=")
    assert auth != padded  # the test really exercises the unpadded decoder
    (found,) = credentials.parse_dockerconfig(config({"r.io": {"auth": auth}}), source="f")
    assert (found.username, found.password) == ("ab", f"{CANARY}x")


def test_auth_password_may_contain_colons() -> None:
    (found,) = credentials.parse_dockerconfig(
        config({"r.io": {"auth": b64("u:p:a:ss")}}), source="f"
    )
    assert (found.username, found.password) == ("u", "p:a:ss")


def test_empty_auth_keeps_username_and_password() -> None:
    (found,) = credentials.parse_dockerconfig(
        config({"r.io": {"username": "u", "password": CANARY, "auth": ""}}), source="f"
    )
    assert (found.username, found.password) == ("u", CANARY)


def test_field_names_match_case_insensitively_like_go_json() -> None:
    (found,) = credentials.parse_dockerconfig(
        json.dumps({"Auths": {"r.io": {"Username": "u", "PASSWORD": CANARY}}}), source="f"
    )
    assert (found.username, found.password) == ("u", CANARY)


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ({"identitytoken": CANARY_TOKEN}, "identitytoken"),
        ({"registrytoken": CANARY_TOKEN}, "registrytoken"),
        ({"identitytoken": "other", "registrytoken": CANARY_TOKEN}, "registrytoken"),
    ],
)
def test_tokens_are_kept_as_token_credentials(entry: dict[str, str], kind: str) -> None:
    (found,) = credentials.parse_dockerconfig(config({"r.io": entry}), source="f")
    assert (found.token, found.token_kind) == (CANARY_TOKEN, kind)


@pytest.mark.parametrize(
    "auth",
    [b64("no-colon-here"), "!!!not base64!!!", "abcde", "YWJj=ZA=="],
)
def test_bad_auth_field_makes_the_whole_secret_malformed(auth: str) -> None:
    with pytest.raises(credentials.MalformedSecret) as caught:
        credentials.parse_dockerconfig(config({"r.io": {"auth": auth}}), source="cfg.json")
    assert "cfg.json" in str(caught.value)
    assert "'r.io'" in str(caught.value)
    assert auth not in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        '{"auths": {"r.io": {"password": "' + CANARY + '"',  # truncated
        b"\xff\xfe" + CANARY.encode(),
        json.dumps([CANARY]),
        json.dumps({"auths": {"r.io": {"password": 12}}}),
        json.dumps({"auths": {"r.io": CANARY}}),
        json.dumps({"auths": [CANARY]}),
    ],
)
def test_invalid_json_names_the_source_never_the_content(content: str | bytes) -> None:
    with pytest.raises(credentials.MalformedSecret) as caught:
        credentials.parse_dockerconfig(content, source="cfg.json")
    assert "cfg.json" in str(caught.value)
    assert CANARY not in str(caught.value)
    assert isinstance(caught.value, errors.PermanentError)


def test_keys_url_parse_refuses_are_ignored_like_the_kubelet() -> None:
    found = credentials.parse_dockerconfig(
        config({"r.io:port": {"username": "a"}, "b ad.io": {"username": "b"}, "ok.io": {}}),
        source="f",
    )
    assert [c.registry for c in found] == ["ok.io"]


# --- key normalisation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "normalised"),
    [
        ("https://index.docker.io/v1/", "index.docker.io"),
        ("index.docker.io", "index.docker.io"),
        ("http://r.io:5000", "r.io:5000"),
        ("r.io/", "r.io"),
        ("https://r.io/v2/", "r.io"),
        ("https://r.io/v2/team", "r.io/team"),
        ("https://r.io/v1/team/app", "r.io/team/app"),
        ("r.io/v1", "r.io/v1"),
        ("r.io/team/", "r.io/team/"),
        ("user@r.io", "r.io"),
        ("*.example.com", "*.example.com"),
        ("reg[0-9].example.com", "reg[0-9].example.com"),
        ("[::1]:5000", "[::1]:5000"),
        ("r.io?x=1", "r.io"),
        ("r.io:abc", None),
        ("bad host", None),
        ("r.io/%zz", None),
    ],
)
def test_keys_are_normalised_as_keyring_add_does(key: str, normalised: str | None) -> None:
    assert credentials.normalize_key(key) == normalised


def test_credential_host_drops_the_path() -> None:
    assert cred("https://r.io:5000/v2/team").host == "r.io:5000"
    assert cred("https://r.io:5000/v2/team").registry == "r.io:5000/team"


# --- matching -------------------------------------------------------------------------------


def test_glob_label_matches_exactly_one_label() -> None:
    assert matching("a.example.com/app", "*.example.com") == ["*.example.com"]
    assert matching("a.b.example.com/app", "*.example.com") == []
    assert matching("example.com/app", "*.example.com") == []


def test_glob_classes_match_one_character() -> None:
    assert matching("reg7.example.com/app", "reg[0-9].example.com") == ["reg[0-9].example.com"]
    assert matching("regx.example.com/app", "reg[0-9].example.com") == []


def test_keys_go_url_parse_refuses_never_match() -> None:
    # '^' is not a host character for net/url, and a leading '[' means an IPv6 literal.
    assert credentials.normalize_key("reg[^0-9].example.com") is None
    assert credentials.normalize_key("[ab].example.com") is None


def test_question_mark_in_a_key_starts_a_query_as_go_url_parse_reads_it() -> None:
    # url.Parse("https://r?g.io") has host "r": the kubelet never sees a '?' glob.
    assert credentials.normalize_key("r?g.io") == "r"
    assert matching("rag.io/app", "r?g.io") == []


def test_ports_must_be_equal() -> None:
    assert matching("r.io:5000/app", "r.io") == []
    assert matching("r.io/app", "r.io:5000") == []
    assert matching("r.io:5000/app", "r.io:5001") == []
    assert matching("r.io:5000/app", "r.io:5000") == ["r.io:5000"]
    assert matching("localhost:5000/x", "localhost:5000") == ["localhost:5000"]
    assert matching("localhost:5000/x", "localhost") == []


def test_path_keys_are_prefixes_of_the_repository_more_specific_first() -> None:
    keys = ("r.io", "r.io/team", "r.io/team/app", "r.io/other")
    assert matching("r.io/team/app", *keys) == ["r.io/team/app", "r.io/team", "r.io"]
    assert matching("r.io/other/x", *keys) == ["r.io/other", "r.io"]
    assert matching("r.io/x", *keys) == ["r.io"]


def test_path_prefix_is_a_string_prefix_as_in_the_kubelet() -> None:
    assert matching("r.io/teamwork/app", "r.io/team") == ["r.io/team"]


def test_keys_are_tried_reverse_sorted() -> None:
    keys = ("*.r.io", "a*.r.io", "ab.r.io", "b.r.io", "a[a-z].r.io")
    assert matching("ab.r.io/x", *keys) == ["ab.r.io", "a[a-z].r.io", "a*.r.io", "*.r.io"]


@pytest.mark.parametrize("image", ["nginx", "docker.io/library/nginx", "index.docker.io/x/y"])
def test_index_docker_io_v1_key_covers_docker_hub_images(image: str) -> None:
    assert matching(image, "https://index.docker.io/v1/") == ["https://index.docker.io/v1/"]


def test_docker_hub_fallback_only_when_nothing_else_matched() -> None:
    assert matching("nginx", "https://index.docker.io/v1/", "docker.io") == ["docker.io"]


def test_docker_hub_fallback_needs_the_bare_index_host() -> None:
    assert matching("team/app", "index.docker.io/team") == []


def test_lookalike_registries_are_not_docker_hub() -> None:
    assert matching("myhostdocker.io/foo", "https://index.docker.io/v1/") == []
    assert matching("r.io/foo", "https://index.docker.io/v1/") == []
    assert matching("localhost:5000/x", "https://index.docker.io/v1/") == []


def test_single_label_registry_is_a_docker_hub_match_as_in_the_kubelet() -> None:
    # isDefaultRegistryMatch: a first part without '.' or ':' (here "localhost").
    assert matching("localhost/x", "https://index.docker.io/v1/") == ["https://index.docker.io/v1/"]


def test_nothing_matches_returns_empty() -> None:
    assert matching("r.io/app", "q.io", "*.r.io") == []


def test_ipv6_registry_with_port() -> None:
    assert matching("[::1]:5000/app", "[::1]:5000") == ["[::1]:5000"]
    assert matching("[::1]:5000/app", "[::1]:5001") == []


# --- several secrets: one keyring, nothing merged ---------------------------------------------


def test_several_secrets_for_one_registry_are_all_candidates_in_pod_order() -> None:
    first, _ = credentials.from_secret(
        secret("one", config({"r.io": {"username": "u1", "password": CANARY}}))
    )
    second, _ = credentials.from_secret(
        secret("two", config({"https://r.io/v2/": {"username": "u2", "password": "p2"}}))
    )
    found = credentials.candidates(images.parse("r.io/app"), [first, second])
    assert [(c.username, c.source, c.key) for c in found] == [
        ("u1", "team-a/one", "r.io"),
        ("u2", "team-a/two", "https://r.io/v2/"),
    ]
    assert all(c.registry == "r.io" for c in found)


def test_candidates_order_by_key_across_secrets() -> None:
    general = [cred("r.io", "general", source="ns/general")]
    specific = [cred("r.io/team", "specific", source="ns/specific")]
    found = credentials.candidates(images.parse("r.io/team/app"), [general, specific])
    assert users(found) == ["specific", "general"]


def test_docker_hub_fallback_across_secrets_is_suppressed_by_any_match() -> None:
    hub = [cred("https://index.docker.io/v1/", "hub")]
    direct = [cred("docker.io", "direct")]
    assert users(credentials.candidates(images.parse("nginx"), [hub, direct])) == ["direct"]
    assert users(credentials.candidates(images.parse("nginx"), [hub])) == ["hub"]


def test_candidates_are_never_merged() -> None:
    keyring = credentials.parse_dockerconfig(
        config({"r.io": {"auth": b64("a:pa")}, "*.io": {"auth": b64("b:pb")}}), source="f"
    )
    found = credentials.candidates(images.parse("r.io/x"), [keyring])
    assert [(c.registry, c.username, c.password) for c in found] == [
        ("r.io", "a", "pa"),
        ("*.io", "b", "pb"),
    ]


# --- Kubernetes secrets ---------------------------------------------------------------------


def test_dockercfg_secret_is_read_without_wrapper() -> None:
    payload = json.dumps({"r.io": {"auth": b64(f"u:{CANARY}")}})
    found, reason = credentials.from_secret(
        secret("legacy", payload, type_=credentials.SECRET_TYPE_DOCKERCFG, key=".dockercfg")
    )
    assert reason is None
    assert [(c.registry, c.username, c.source) for c in found] == [("r.io", "u", "team-a/legacy")]


def test_dockerconfigjson_secret_without_auths_has_no_registry() -> None:
    found, reason = credentials.from_secret(secret("s", json.dumps({"r.io": {"username": "u"}})))
    assert found == []
    assert reason is not None and "team-a/s" in reason


@pytest.mark.parametrize(
    ("secret_obj", "reason_part"),
    [
        (secret("s", "{}", type_="Opaque"), "'Opaque'"),
        (secret("s", config({}), key=".dockercfg"), "no .dockerconfigjson"),
        (
            secret("s", "{}", type_=credentials.SECRET_TYPE_DOCKERCFG, key=".dockerconfigjson"),
            "no .dockercfg",
        ),
        ({"metadata": {"namespace": "team-a", "name": "s"}, "type": "Opaque"}, "'Opaque'"),
        (
            {
                "metadata": {"namespace": "team-a", "name": "s"},
                "type": credentials.SECRET_TYPE_DOCKERCONFIGJSON,
                "data": {".dockerconfigjson": ""},
            },
            "empty",
        ),
    ],
)
def test_other_secrets_are_skipped_with_a_reason(
    secret_obj: dict[str, Any], reason_part: str
) -> None:
    found, reason = credentials.from_secret(secret_obj)
    assert found == []
    assert reason is not None
    assert "team-a/s" in reason and reason_part in reason


def test_secret_with_invalid_json_is_malformed_and_named() -> None:
    bad = secret("regcred", '{"auths": {"r.io": {"password": "' + CANARY)
    with pytest.raises(credentials.MalformedSecret) as caught:
        credentials.from_secret(bad)
    assert "team-a/regcred" in str(caught.value)
    assert CANARY not in str(caught.value)


def test_secret_with_bad_base64_is_malformed_and_named() -> None:
    bad = secret("regcred", "{}")
    bad["data"][".dockerconfigjson"] = "%%%" + CANARY
    with pytest.raises(credentials.MalformedSecret) as caught:
        credentials.from_secret(bad)
    assert "team-a/regcred" in str(caught.value)
    assert CANARY not in str(caught.value)


# --- which secrets a pod uses ---------------------------------------------------------------


def test_pod_pull_secrets_win_over_the_service_accounts() -> None:
    pod = {"imagePullSecrets": [{"name": "b"}, {"name": "a"}], "serviceAccountName": "builder"}
    account = {"imagePullSecrets": [{"name": "sa-secret"}]}
    assert credentials.pull_secret_names(pod, account) == ["b", "a"]


def test_service_account_secrets_apply_when_the_pod_lists_none() -> None:
    account = {"imagePullSecrets": [{"name": "sa-1"}, {"name": "sa-2"}]}
    assert credentials.pull_secret_names({}, account) == ["sa-1", "sa-2"]
    assert credentials.pull_secret_names({"imagePullSecrets": []}, account) == ["sa-1", "sa-2"]
    assert credentials.pull_secret_names({}, None) == []


def test_service_account_defaults_to_default() -> None:
    assert credentials.service_account_name({}) == "default"
    assert credentials.service_account_name({"serviceAccount": "old"}) == "old"
    assert credentials.service_account_name({"serviceAccountName": "new"}) == "new"


# --- secrets never leak -----------------------------------------------------------------------


def test_credential_repr_str_and_logs_never_show_password_or_token() -> None:
    c = credentials.Credential(
        registry="r.io", username="u", password=CANARY, token=CANARY_TOKEN, source="ns/s", key="r"
    )
    stream = io.StringIO()
    logger = logging.getLogger("test.credentials.canary")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("trying %s / %r", c, c)
        logger.warning("list %s", [c])
    finally:
        logger.removeHandler(handler)
    outputs = [repr(c), str(c), f"{c}", f"{c!r}", str([c]), stream.getvalue()]
    for text in outputs:
        assert CANARY not in text
        assert CANARY_TOKEN not in text
    assert "u" in str(c) and "r.io" in str(c) and "ns/s" in str(c)


def test_auth_base64_never_appears_in_outputs() -> None:
    auth = b64(f"u:{CANARY}")
    (c,) = credentials.parse_dockerconfig(config({"r.io": {"auth": auth}}), source="f")
    for text in (repr(c), str(c)):
        assert auth not in text and CANARY not in text


# --- property-based -------------------------------------------------------------------------

_segment = st.text("abc", min_size=1, max_size=3)


@settings(deadline=None)
@given(
    st.lists(st.lists(_segment, max_size=3).map("/".join), min_size=1, max_size=6),
    st.lists(_segment, min_size=1, max_size=4).map("/".join),
)
def test_path_keys_match_by_prefix_in_reverse_sorted_order(paths: list[str], repo: str) -> None:
    keys = [("r.io/" + p).rstrip("/") for p in paths]
    found = matching(f"r.io/{repo}", *keys)
    expected = sorted(
        {k for k in keys if f"/{repo}".startswith(k.removeprefix("r.io"))}, reverse=True
    )
    assert list(dict.fromkeys(found)) == expected


@settings(deadline=None)
@given(st.sampled_from(["", "https://", "http://"]), st.sampled_from(["", "/", "/v1/", "/v2/"]))
def test_scheme_and_api_version_never_change_the_key(scheme: str, suffix: str) -> None:
    assert credentials.normalize_key(f"{scheme}r.io:5000{suffix}") == "r.io:5000"


def test_bad_entry_in_a_secret_names_the_secret_and_key_never_the_auth() -> None:
    bad_auth = b64("no-colon-" + CANARY)
    bad = secret("regcred", config({"r.io": {"auth": bad_auth}}))
    with pytest.raises(credentials.MalformedSecret) as caught:
        credentials.from_secret(bad)
    message = str(caught.value)
    assert "secret team-a/regcred" in message and "'r.io'" in message
    assert bad_auth not in message and CANARY not in message


def test_a_password_written_into_a_key_is_never_shown() -> None:
    """A key like https://bob:pw@host is matched as host, and printed without the pw."""
    import json as _json

    planted = "key-password-canary-91c2"
    content = _json.dumps(
        {"auths": {f"https://bob:{planted}@reg.example.com": {"username": "u", "password": "p"}}}
    )
    (found,) = credentials.parse_dockerconfig(content, source="team-a/odd-key")
    assert found.registry == "reg.example.com"
    assert found.key == "https://***@reg.example.com"
    for shown in (repr(found), str(found), found.origin):
        assert planted not in shown


def test_glob_classes_read_bang_literally_and_malformed_globs_never_match_as_in_go() -> None:
    # The one matcher for "whose credential is this" (the registry client uses it too):
    # Go's filepath.Match negates with '^' only, so '[!x]' is the class {'!', 'x'}, where
    # fnmatch would read "anything but x"; a malformed class matches nothing.
    assert credentials.urls_match("reg[!x].example.com", "regx.example.com/app")
    assert not credentials.urls_match("reg[!x].example.com", "rega.example.com/app")
    assert not credentials.urls_match("reg[]a].example.com", "rega.example.com/app")
    assert not credentials.urls_match("reg[a-.example.com", "rega.example.com/app")
