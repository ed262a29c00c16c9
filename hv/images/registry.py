"""A client for the OCI distribution / Docker registry v2 API, just enough to pull.

Anonymous bearer tokens (the WWW-Authenticate dance), basic credentials from
~/.docker/config.json, manifest lists narrowed to linux/amd64, and every byte checked
against its digest. Every requests/OSError failure becomes a RegistryError here.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hv import paths
from hv.errors import DigestMismatch, RegistryError, from_os_error

if TYPE_CHECKING:
    import requests


def _requests():
    """requests (and urllib3) cost ~60-150 ms to import: only a pull needs them, not every
    `hv run` that looks an image up through the store."""
    import requests

    return requests

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST_V2 = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (OCI_MANIFEST, MANIFEST_V2)
INDEX_TYPES = (OCI_INDEX, MANIFEST_LIST_V2)
_ACCEPT = ", ".join((OCI_INDEX, MANIFEST_LIST_V2, OCI_MANIFEST, MANIFEST_V2))
_TIMEOUT = (15, 60)
_CHUNK = 1 << 20
_MAX_MANIFEST = 4 << 20


def registry_host(registry: str) -> str:
    """The host that actually serves a registry name (Docker Hub's API lives elsewhere)."""
    return "registry-1.docker.io" if registry == "docker.io" else registry


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def is_insecure(registry: str, listed: frozenset[str] = frozenset()) -> bool:
    """Plain HTTP only for loopback registries and those `listed` (HV_INSECURE_REGISTRIES)."""
    name = _hostname(registry)
    if registry in listed or name in listed:
        return True
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _credentials(registry: str, docker_config: Path) -> tuple[str, str] | None:
    """user/password for `registry` from DOCKER_CONFIG/config.json `auths`, if any."""
    config = docker_config / "config.json"
    try:
        auths = json.loads(config.read_text()).get("auths", {})
    except (OSError, ValueError, AttributeError):
        return None
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == "docker.io":
        keys = ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"] + keys
    for key in keys:
        entry = auths.get(key) or auths.get(key.rstrip("/"))
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return user, password
    return None


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class RegistryClient:
    """Talks to one repository of one registry."""

    def __init__(self, registry: str, repository: str, insecure: frozenset[str] = frozenset(),
                 docker_config: Path = Path("~/.docker")) -> None:
        self.registry = registry
        self.repository = repository
        self.host = registry_host(registry)
        scheme = "http" if is_insecure(registry, insecure) else "https"
        self.base = f"{scheme}://{self.host}/v2/{repository}"
        self.session = _requests().Session()
        self.session.headers["User-Agent"] = "hv/0.1"
        self._auth_header: str | None = None
        self._creds = _credentials(registry, docker_config.expanduser())

    # --- HTTP with auth and error translation -----------------------------------------

    def _send(self, url: str, **kwargs) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self._auth_header:
            headers["Authorization"] = self._auth_header
        try:
            return self.session.get(url, headers=headers, timeout=_TIMEOUT, **kwargs)
        except _requests().exceptions.SSLError as e:
            raise RegistryError(
                f"TLS handshake with registry {self.host} failed: {_short(e)}",
                hint="if this registry speaks plain HTTP, add it to HV_INSECURE_REGISTRIES",
            ) from e
        except _requests().exceptions.ConnectionError as e:
            raise RegistryError(
                f"cannot reach registry {self.host}: {_short(e)}",
                hint=f"check the network and that {self.host} is the right registry",
            ) from e
        except _requests().exceptions.Timeout as e:
            raise RegistryError(
                f"registry {self.host} did not answer in time",
                hint="check the network and try again",
            ) from e
        except _requests().exceptions.RequestException as e:
            raise RegistryError(f"request to registry {self.host} failed: {_short(e)}") from e

    def _get(self, url: str, what: str, **kwargs) -> requests.Response:
        resp = self._send(url, **kwargs)
        if resp.status_code == 401:
            resp.close()
            self._authenticate(resp.headers.get("WWW-Authenticate", ""), what)
            resp = self._send(url, **kwargs)
            if resp.status_code == 401:
                resp.close()
                raise self._denied(what)
        if resp.status_code >= 400:
            resp.close()
            raise self._http_error(resp, what)
        return resp

    def _authenticate(self, challenge: str, what: str) -> None:
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if not self._creds:
                raise self._denied(what)
            token = base64.b64encode(":".join(self._creds).encode()).decode()
            self._auth_header = f"Basic {token}"
            return
        if scheme != "bearer" or "realm" not in params:
            raise self._denied(what)
        query = {"scope": params.get("scope") or f"repository:{self.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        try:
            resp = self.session.get(
                params["realm"], params=query, auth=self._creds, timeout=_TIMEOUT
            )
        except _requests().exceptions.RequestException as e:
            raise RegistryError(
                f"cannot get a token for {self.registry} from {params['realm']}: {_short(e)}"
            ) from e
        if resp.status_code in (401, 403):
            raise self._denied(what)
        if resp.status_code >= 400:
            raise self._http_error(resp, f"a token for {what}")
        try:
            body = resp.json()
            token = body.get("token") or body["access_token"]
        except (ValueError, KeyError, AttributeError) as e:
            raise RegistryError(
                f"registry {self.registry} token service answered without a token"
            ) from e
        self._auth_header = f"Bearer {token}"

    def _denied(self, what: str) -> RegistryError:
        name = f"{self.registry}/{self.repository}"
        return RegistryError(
            f"pull access denied for {_familiar(self.registry, self.repository)}, repository "
            "does not exist or may require 'hv login'",
            hint=f"check the name; private images of {name} need credentials in "
            "~/.docker/config.json",
        )

    def _http_error(self, resp: requests.Response, what: str) -> RegistryError:
        codes = _error_codes(resp)
        if what.startswith("blob ") and (resp.status_code == 404 or "BLOB_UNKNOWN" in codes):
            return RegistryError(
                f"{what} unknown to {self.host}/{self.repository}",
                hint="the registry lacks content its own manifest names; push the image again",
            )
        if resp.status_code == 404 or {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"} & codes:
            if "NAME_UNKNOWN" in codes:
                return self._denied(what)
            return RegistryError(
                f"{what} not found: manifest unknown",
                hint="check the image name and tag ('hv images' lists local images)",
            )
        return RegistryError(
            f"registry {self.host} answered {resp.status_code} {resp.reason} for {what}",
            hint="the registry failed; try again later or ask its operator",
        )

    # --- the API ---------------------------------------------------------------------

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """Fetch a manifest or index; returns (body, media type, verified digest)."""
        what = f"manifest for {_familiar(self.registry, self.repository)}" + (
            f"@{reference}" if reference.startswith("sha256:") else f":{reference}"
        )
        resp = self._get(
            f"{self.base}/manifests/{reference}", what, headers={"Accept": _ACCEPT}, stream=True
        )
        with resp:
            body = _read_limited(resp, _MAX_MANIFEST, self.host)
        digest = sha256_digest(body)
        expected = reference if reference.startswith("sha256:") else None
        expected = expected or resp.headers.get("Docker-Content-Digest")
        if expected and expected.startswith("sha256:") and expected != digest:
            raise DigestMismatch(
                f"manifest {expected} from {self.host}/{self.repository} has digest {digest}"
            )
        media_type = resp.headers.get("Content-Type", "").partition(";")[0].strip()
        try:
            media_type = json.loads(body).get("mediaType") or media_type
        except (ValueError, AttributeError) as e:
            raise RegistryError(f"registry {self.host} sent a manifest that is not JSON") from e
        return body, media_type, digest

    def get_blob(self, digest: str, limit: int = 16 << 20) -> bytes:
        """A small blob (an image config) read into memory and verified."""
        resp = self._get(f"{self.base}/blobs/{digest}", f"blob {digest}", stream=True)
        with resp:
            body = _read_limited(resp, limit, self.host)
        if sha256_digest(body) != digest:
            raise DigestMismatch(
                f"blob {digest} from {self.host}/{self.repository} failed its digest check"
            )
        return body

    def download_blob(
        self, digest: str, dest: Path, progress: Callable[[int], None] | None = None
    ) -> None:
        """Stream a blob into `dest` (a temp file the caller owns), hashing as it goes.

        On a digest mismatch `dest` is removed and DigestMismatch raised.
        """
        resp = self._get(f"{self.base}/blobs/{digest}", f"blob {digest}", stream=True)
        hasher = hashlib.sha256()
        done = 0
        try:
            with resp, open(dest, "wb") as out:
                for chunk in resp.iter_content(_CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done)
        except _requests().exceptions.RequestException as e:
            dest.unlink(missing_ok=True)
            raise RegistryError(
                f"blob {digest} from {self.host} is truncated: the download stopped after "
                f"{done} bytes ({_short(e)})",
                hint="check the network and pull again") from e
        except OSError as e:
            dest.unlink(missing_ok=True)
            raise from_os_error(e, paths.state_root()) from e
        if "sha256:" + hasher.hexdigest() != digest:
            dest.unlink(missing_ok=True)
            raise DigestMismatch(
                f"blob {digest} from {self.host}/{self.repository} failed its digest check "
                f"(got sha256:{hasher.hexdigest()})"
            )


def _familiar(registry: str, repository: str) -> str:
    if registry == "docker.io":
        return repository.removeprefix("library/")
    return f"{registry}/{repository}"


def _error_codes(resp: requests.Response) -> set[str]:
    try:
        return {e.get("code", "") for e in resp.json().get("errors", [])}
    except (ValueError, AttributeError, TypeError):
        return set()


def _read_limited(resp: requests.Response, limit: int, host: str) -> bytes:
    body = b""
    try:
        for chunk in resp.iter_content(1 << 16):
            body += chunk
            if len(body) > limit:
                break
    except (_requests().exceptions.RequestException, OSError) as e:
        raise RegistryError(f"reading from registry {host} failed: {_short(e)}") from e
    if len(body) > limit:
        raise RegistryError(f"registry {host} sent a document larger than {limit} bytes")
    return body


def _short(err: Exception) -> str:
    """The root cause of a requests error in a few words ('Connection refused')."""
    text = str(err)
    for pattern, short in (
        (r"Connection refused", "connection refused"),
        (r"Name or service not known|nodename nor servname|Temporary failure in name",
         "name does not resolve"),
        (r"timed out", "timed out"),
        (r"No route to host", "no route to host"),
        (r"CERTIFICATE_VERIFY_FAILED", "certificate verify failed"),
        (r"WRONG_VERSION_NUMBER", "the server does not speak TLS"),
        (r"IncompleteRead|Connection broken|Response ended prematurely",
         "the connection closed before the end"),
    ):
        if re.search(pattern, text):
            return short
    return text.splitlines()[0][:200] if text else type(err).__name__
