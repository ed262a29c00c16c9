"""Every failure hv reports: one line of what went wrong, one hint, a Docker exit code.

Nothing from libvirt, paramiko or subprocess leaves hv/ untranslated; the CLI prints
`message` and `hint:` and exits with `exit_code`.
"""

from __future__ import annotations

import errno


class HvError(Exception):
    """Base class: message, hint, Docker's exit code (125 = hv itself failed) and the HTTP
    status the Engine API answers with (Docker's: 500 unless a subclass says otherwise)."""

    exit_code = 125
    http_status = 500
    hint = "run the command again with --debug for details"

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        # errors cross a process boundary (libvirt operations run in a child process)
        return (self.__class__, (self.message, self.hint, self.exit_code))


class UsageError(HvError):
    """A bad flag value or argument (Docker answers 125)."""

    hint = "see 'hv COMMAND --help'"
    http_status = 400


class NotFound(HvError):
    """A container, image or volume that does not exist."""

    http_status = 404


class ImageNotFound(NotFound):
    hint = "check the name with 'hv images', or pull it with 'hv pull IMAGE'"


class ContainerNotFound(NotFound):
    hint = "list containers with 'hv ps -a'"


class NetworkNotFound(NotFound):
    """Docker: `network NAME not found`, exit 1 from the `network` verbs (`run`/`create`
    report it with 125: pass exit_code=125 there)."""

    exit_code = 1
    hint = "list networks with 'hv network ls'"


class Conflict(HvError):
    """A name in use, an image used by a container, a running container to remove."""

    http_status = 409


class NotModified(HvError):
    """Start of a started / stop of a stopped container: Docker's 304, not a failure."""

    http_status = 304


class ExecNotFound(NotFound):
    hint = "an exec instance lives as long as its container"


class RegistryError(HvError):
    """The registry could not be reached or answered with an error."""

    hint = "check the image name and that the registry is reachable"


class DigestMismatch(RegistryError):
    hint = "the registry served corrupt content; pull again or report it to the registry owner"


class InvalidDigest(HvError):
    """A digest that is not 'sha256:' + 64 lowercase hex (from a manifest, archive or ref)."""

    hint = "the image's manifest or archive is malformed or crafted; get it from a trusted source"


class RuntimeFailure(HvError):
    """The hypervisor (libvirt/QEMU) failed to do what was asked."""

    hint = "read the libvirt log under HV_ROOT/libvirt/ and run with --debug"


class GuestAssetsMissing(HvError):
    hint = "run 'make setup' to build the guest kernel and initramfs"


class CommandNotFound(HvError):
    """The container's command does not exist in the image (Docker's 127)."""

    exit_code = 127
    http_status = 400  # as dockerd's "executable file not found" (the CLI turns it into 127)
    hint = "check the command and the image's PATH; 'hv inspect IMAGE' shows Entrypoint and Cmd"


class CommandNotExecutable(HvError):
    """The container's command exists but cannot be run (Docker's 126)."""

    exit_code = 126
    http_status = 400
    hint = "check the file's mode and format inside the image"


class Interrupted(HvError):
    exit_code = 130
    hint = "nothing was left behind; run the command again when ready"


class NoSpace(HvError):
    """The filesystem under the state root is full (ENOSPC or a quota)."""

    hint = ("free space there ('hv system prune', 'hv rmi IMAGE', 'hv volume prune') "
            "or point HV_ROOT at a larger filesystem")


def from_os_error(err: OSError, where: object) -> HvError:
    """The one translation of an OS error that reached hv's edge: `where` is the state root
    (the filesystem hv writes to), named in the message so the user knows what to free."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space left on device under {where}")
    if err.errno == errno.EROFS:
        return HvError(f"read-only file system under {where}",
                       hint="remount it read-write or point HV_ROOT elsewhere")
    name = f": {err.filename}" if err.filename else ""
    if err.errno in (errno.EACCES, errno.EPERM):
        return HvError(f"permission denied{name}",
                       hint="run hv as the user who owns the state root (or as root)")
    return HvError(f"{err.strerror or err}{name}")


# libvirt's virErrorNumber values that say more than "it failed"
_VIR_ERR_NO_DOMAIN = 42
_VIR_ERR_OPERATION_INVALID = 55
_VIR_ERR_OPERATION_TIMEOUT = 68
_VIR_ERR_NO_SUPPORT = 3


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def translate(err: BaseException, doing: str, where: object = None) -> HvError:
    """The one translator of what libvirt, paramiko and the OS raise into an HvError.

    `doing` starts the message ("cannot start the VM"); `where`: the state root, for OS
    errors (see from_os_error). Matched by type name, so this module imports neither
    libvirt nor paramiko."""
    if isinstance(err, HvError):
        return err
    if isinstance(err, OSError) and where is not None:
        return from_os_error(err, where)
    kind = type(err).__name__
    module = type(err).__module__ or ""
    if kind == "libvirtError":
        code = err.get_error_code() if hasattr(err, "get_error_code") else None
        text = _first_line(str(err))
        if code == _VIR_ERR_NO_DOMAIN:
            return ContainerNotFound(f"{doing}: the VM is gone ({text})",
                                     hint="see 'hv ps -a'; it may have been removed meanwhile")
        if code == _VIR_ERR_OPERATION_INVALID:
            return Conflict(f"{doing}: {text}", hint="see 'hv ps -a' for its state")
        if code == _VIR_ERR_OPERATION_TIMEOUT:
            return RuntimeFailure(f"{doing}: libvirt timed out ({text})",
                                  hint="another hv command may hold the VM; try again")
        if code == _VIR_ERR_NO_SUPPORT:
            return RuntimeFailure(f"{doing}: not supported here ({text})")
        return RuntimeFailure(f"{doing}: {text}")
    if module.startswith("paramiko") or kind in ("SSHException", "EOFError"):
        return RuntimeFailure(f"{doing}: {_first_line(str(err)) or kind}",
                              hint="is the container still running? 'hv ps -a'")
    return RuntimeFailure(f"{doing}: {_first_line(str(err)) or kind}")
