"""Image references read as distribution/reference and the kubelet read them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanqueue import errors, images

HEX64 = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX64}"


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", None, None),
        ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("team/app", "docker.io", "team/app", None, None),
        ("docker.io/nginx", "docker.io", "library/nginx", None, None),
        ("docker.io/library/nginx", "docker.io", "library/nginx", None, None),
        ("index.docker.io/x/y", "docker.io", "x/y", None, None),
        ("index.docker.io/nginx", "docker.io", "library/nginx", None, None),
        ("localhost/app", "localhost", "app", None, None),
        ("localhost:5000/x", "localhost:5000", "x", None, None),
        ("registry.example.com:8443/a/b/c:v1", "registry.example.com:8443", "a/b/c", "v1", None),
        ("myhostdocker.io/foo", "myhostdocker.io", "foo", None, None),
        ("host:5000/app", "host:5000", "app", None, None),
        ("[::1]:5000/app:t", "[::1]:5000", "app", "t", None),
        (f"nginx@{DIGEST}", "docker.io", "library/nginx", None, DIGEST),
        (f"nginx:1.25@{DIGEST}", "docker.io", "library/nginx", "1.25", DIGEST),
        (f"r.io/a__b/c-d--e.f:T_1@{DIGEST}", "r.io", "a__b/c-d--e.f", "T_1", DIGEST),
    ],
)
def test_references_are_normalised_like_the_kubelet(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = images.parse(text)
    assert ref == images.Reference(registry, repository, tag, digest)


def test_str_and_name_are_fully_qualified() -> None:
    ref = images.parse(f"nginx:1.25@{DIGEST}")
    assert ref.name == "docker.io/library/nginx"
    assert str(ref) == f"docker.io/library/nginx:1.25@{DIGEST}"


def test_only_docker_hub_references_are_docker_hub() -> None:
    assert images.parse("nginx").is_docker_hub
    assert images.parse("index.docker.io/x/y").is_docker_hub
    assert not images.parse("myhostdocker.io/foo").is_docker_hub
    assert not images.parse("localhost:5000/x").is_docker_hub


def test_first_component_without_dot_colon_or_localhost_is_a_docker_hub_namespace() -> None:
    assert images.parse("myhost/foo") == images.Reference("docker.io", "myhost/foo")


def test_with_digest_keeps_name_and_tag() -> None:
    pinned = images.parse("r.io/app:v1").with_digest(DIGEST)
    assert pinned == images.Reference("r.io", "app", "v1", DIGEST)


def test_with_digest_refuses_a_bad_digest() -> None:
    with pytest.raises(images.InvalidReference, match=r"r\.io/app"):
        images.parse("r.io/app").with_digest("sha256:abc")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("Nginx", "must be lowercase"),
        ("r.io/Team/app", "must be lowercase"),
        ("a//b", "not valid"),
        ("a/", "not valid"),
        ("-a", "not valid"),
        ("a..b", "not valid"),
        ("r.io/", "no repository"),
        (":tag", "no repository"),
        ("nginx:-x", "invalid tag"),
        ("nginx:" + "a" * 129, "invalid tag"),
        ("nginx@sha256:abc", "invalid digest"),
        ("nginx@sha256:" + "A" * 64, "64 lowercase"),
        ("nginx@sha256:" + "a" * 63, "64 lowercase"),
        ("nginx@md5:" + "a" * 32, "unsupported digest algorithm"),
        (HEX64, "image ID"),
        (" nginx", "whitespace"),
        ("r_io:5000/app", "invalid registry"),
        ("r.io/" + "a" * 260, "longer than 255"),
    ],
)
def test_bad_references_name_the_reference_and_the_problem(text: str, problem: str) -> None:
    with pytest.raises(images.InvalidReference) as caught:
        images.parse(text)
    assert problem in str(caught.value)
    assert repr(text) in str(caught.value)
    assert isinstance(caught.value, errors.PermanentError)


@pytest.mark.parametrize(
    ("text", "digest", "name"),
    [
        (f"docker-pullable://nginx@{DIGEST}", DIGEST, "docker.io/library/nginx"),
        (f"docker-pullable://r.io:5000/a/b@{DIGEST}", DIGEST, "r.io:5000/a/b"),
        (f"docker://{DIGEST}", DIGEST, None),
        (DIGEST, DIGEST, None),
        (f"docker.io/library/nginx@{DIGEST}", DIGEST, "docker.io/library/nginx"),
        (f"localhost:5000/x@{DIGEST}", DIGEST, "localhost:5000/x"),
    ],
)
def test_image_ids_in_every_runtime_form(text: str, digest: str, name: str | None) -> None:
    image_id = images.parse_image_id(text)
    assert image_id.digest == digest
    if name is None:
        assert image_id.reference is None
    else:
        assert image_id.reference is not None
        assert image_id.reference.name == name
        assert image_id.reference.digest == digest


@pytest.mark.parametrize(
    "text", ["", "docker://", "sha256:xyz", "docker-pullable://nginx", "r.io/app:v1", "r.io/a@b"]
)
def test_bad_image_ids_are_refused_with_the_id_named(text: str) -> None:
    with pytest.raises(images.InvalidReference) as caught:
        images.parse_image_id(text)
    assert "image ID" in str(caught.value) or "image reference" in str(caught.value)


# --- property-based: anything we print we read back identically ------------------------

_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_sep = st.sampled_from([".", "_", "__", "-", "--"])


@st.composite
def _path_components(draw: st.DrawFn) -> str:
    parts = [draw(_alnum)]
    for _ in range(draw(st.integers(0, 2))):
        parts += [draw(_sep), draw(_alnum)]
    return "".join(parts)


_label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)


@st.composite
def _registries(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["hub", "dotted", "localhost", "ipv6"]))
    if kind == "hub":
        return "docker.io"
    if kind == "localhost":
        host = "localhost"
    elif kind == "ipv6":
        host = "[" + draw(st.from_regex(r"[0-9a-f]{0,4}:[0-9a-f:]{1,8}", fullmatch=True)) + "]"
    else:
        host = ".".join(draw(st.lists(_label, min_size=2, max_size=3)))
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    return host if port is None else f"{host}:{port}"


@st.composite
def _references(draw: st.DrawFn) -> images.Reference:
    registry = draw(_registries())
    components = draw(st.lists(_path_components(), min_size=1, max_size=3))
    if registry == "docker.io" and len(components) == 1:
        components.insert(0, "library")
    tag = draw(
        st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
    )
    digest = draw(st.one_of(st.none(), st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True)))
    return images.Reference(registry, "/".join(components), tag, digest)


@settings(deadline=None)
@given(_references())
def test_printed_references_parse_back_to_the_same_reference(ref: images.Reference) -> None:
    assert images.parse(str(ref)) == ref


@settings(deadline=None)
@given(_references())
def test_parsing_is_idempotent_on_its_own_output(ref: images.Reference) -> None:
    once = images.parse(str(ref))
    assert str(images.parse(str(once))) == str(once)


@settings(deadline=None)
@given(_references())
def test_short_docker_hub_forms_normalise_to_the_long_form(ref: images.Reference) -> None:
    first = ref.repository.split("/")[0]
    if not ref.is_docker_hub or "." in first or first == "localhost":
        return  # such a first component would be read as a registry, rightly
    short = str(ref).removeprefix("docker.io/")
    if ref.repository.count("/") == 1:
        short = short.removeprefix("library/")
    assert images.parse(short) == ref
    assert images.parse("index.docker.io/" + str(ref).removeprefix("docker.io/")) == ref


@settings(deadline=None)
@given(_references())
def test_image_ids_carry_the_pinned_reference(ref: images.Reference) -> None:
    pinned = images.Reference(ref.registry, ref.repository, None, DIGEST)
    image_id = images.parse_image_id(f"docker-pullable://{pinned}")
    assert image_id == images.ImageID(DIGEST, pinned)


@settings(deadline=None)
@given(st.text(max_size=40))
def test_parse_never_fails_with_anything_but_invalid_reference(text: str) -> None:
    try:
        ref = images.parse(text)
    except images.InvalidReference:
        return
    assert images.parse(str(ref)) == ref
