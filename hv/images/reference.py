"""Image references the way Docker reads them: `ubuntu` is `docker.io/library/ubuntu:latest`.

The grammar follows distribution/reference (the Go package Docker uses), so names that Docker
rejects are rejected here with Docker's message "invalid reference format".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hv.errors import UsageError

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_REGISTRIES = {"index.docker.io", "registry-1.docker.io"}

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_TAG_RE = re.compile(rf"^{_TAG}$")
_DIGEST_RE = re.compile(rf"^{_DIGEST}$")
_SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


def _invalid(text: str, why: str = "") -> UsageError:
    message = "invalid reference format" + (f": {why}" if why else "")
    return UsageError(
        message,
        hint=f"{text!r} is not an image name; use NAME[:TAG] or NAME@sha256:DIGEST",
    )


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's rule: the first part is a registry only if it looks like a host."""
    first, sep, rest = name.partition("/")
    if not sep or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        return DEFAULT_REGISTRY, name
    return first, rest


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse and normalise; raises UsageError("invalid reference format...") on bad input."""
        if not text or text != text.strip():
            raise _invalid(text)
        rest = text
        digest = None
        if "@" in rest:
            rest, _, digest = rest.partition("@")
            if not _DIGEST_RE.match(digest):
                raise _invalid(text)
            if digest.startswith("sha256:") and not _SHA256_RE.match(digest):
                raise _invalid(text)
            if not digest.startswith("sha256:"):
                raise _invalid(text, "only sha256 digests are supported")
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG_RE.match(tag):
                raise _invalid(text)
        if not rest or len(rest) > 255:
            raise _invalid(text)
        registry, path = _split_domain(rest)
        if not _DOMAIN_RE.match(registry):
            raise _invalid(text)
        if path.lower() != path:
            raise _invalid(text, "repository name must be lowercase")
        if not _PATH_RE.match(path):
            raise _invalid(text)
        if registry in _LEGACY_REGISTRIES:
            registry = DEFAULT_REGISTRY
        if registry == DEFAULT_REGISTRY and "/" not in path:
            if _HEX64_RE.match(path):
                raise _invalid(text, "cannot specify 64-byte hexadecimal strings")
            path = "library/" + path
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry=registry, repository=path, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """Canonical name without tag or digest: 'docker.io/library/ubuntu'."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """Docker's short repository name: 'ubuntu', 'user/app', '127.0.0.1:5000/x'."""
        if self.registry == DEFAULT_REGISTRY:
            return self.repository.removeprefix("library/")
        return self.name

    def _suffix(self) -> str:
        out = f":{self.tag}" if self.tag else ""
        return out + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()

    def familiar(self) -> str:
        return self.familiar_name + self._suffix()

    def with_tag(self, tag: str | None) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, digest)

    @property
    def reference(self) -> str:
        """What goes after /manifests/ in a registry URL: the digest if any, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG
