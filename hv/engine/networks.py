"""Networks for the facade: `hv network ...` verbs, and what create, start, stop and rm do
with a container's endpoints (hv.network holds the records and devices; this is when).

A part of the facade (hv.engine.Engine mixes it in); `self` is the Engine. Every call into
hv.network takes the state root. docs/networks.md has the design.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable

from hv.containers import Container, Record
from hv.errors import Conflict, HvError, UsageError
from hv.spec import RunOptions, parse_add_host


class Networks:
    # --- the verbs ---------------------------------------------------------------------------

    def network_create(self, name: str, *, driver: str = "bridge", subnet: str | None = None,
                       gateway: str | None = None, internal: bool = False,
                       labels: dict[str, str] | None = None):
        from hv.network import ops

        return ops.create(self.paths.state_root(), name, driver=driver or "bridge",
                          subnet=subnet, gateway=gateway, internal=internal, labels=labels)

    def network_list(self) -> list:
        """hv.network.model.Network objects, `bridge` and `none` included."""
        from hv.network import ops

        self._forget_vanished(self.containers(all=True))
        return ops.list_networks(self.paths.state_root())

    def network(self, ref: str):
        from hv.network import ops

        return ops.get(self.paths.state_root(), ref)

    def network_inspect(self, ref: str) -> dict:
        from hv.network import ops

        self._forget_vanished(self.containers(all=True))
        return ops.inspect(self.paths.state_root(), ref)

    def network_remove(self, ref: str) -> str:
        from hv.network import ops

        self._forget_vanished(self.containers(all=True))
        return ops.remove(self.paths.state_root(), ref).name

    def network_prune(self) -> list[str]:
        from hv.network import ops

        self._forget_vanished(self.containers(all=True))
        return ops.prune(self.paths.state_root())

    def network_connect(self, ref: str, container: str, aliases: Iterable[str] = (),
                        ip: str | None = None):
        """Docker's `network connect`. A stopped container gets a record (its NIC comes at
        its next start); a running one its NIC at once: a tap on the network's bridge,
        hot-plugged into the VM, given its address by the agent (docs/networks.md)."""
        from hv.network import ops

        root = self.paths.state_root()
        net = ops.get(root, ref)
        c = self.container(container)
        if c.active and c.paused:
            raise Conflict(f"cannot connect paused container {c.name} to network {net.name}",
                           hint=f"unpause it first ('hv unpause {c.name}')", exit_code=1)
        if net.name != "none" and net.driver == "bridge":
            self._require_admin(exit_code=1)
        ep = ops.connect(root, net.id, c.id, c.name, aliases, ip)
        if c.active and ep.tap:
            try:
                self._plug(c, ep)
            except BaseException:
                with contextlib.suppress(HvError, OSError):
                    ops.disconnect(root, net.id, c.id, force=True)
                raise
            self._push_hosts(ops.peers(root, c.id))
        else:
            self._push_hosts(ops.peers(root, c.id) - {c.id})
        return ep

    def network_disconnect(self, ref: str, container: str, force: bool = False) -> None:
        """Docker's `network disconnect`; a running container's NIC loses its address in
        the guest, then leaves the VM (unplugged), then its tap goes."""
        from hv.network import ops

        root = self.paths.state_root()
        net = ops.get(root, ref)
        c = self.container(container)
        if c.active and c.paused:
            raise Conflict(f"cannot disconnect paused container {c.name} from network "
                           f"{net.name}", hint=f"unpause it first ('hv unpause {c.name}')",
                           exit_code=1)
        peers = ops.peers(root, c.id)
        ep = dict((n.id, e) for n, e in ops.endpoints_of(root, c.id)).get(net.id)
        if c.active and ep is not None and ep.tap:
            self._unplug(c, ep)
        ops.disconnect(root, net.id, c.id, force=force)
        self._push_hosts(peers if c.active else peers - {c.id})

    def _plug(self, c: Container, ep) -> None:
        """Hot-plug `ep`'s NIC into `c`'s VM and have the agent configure it."""
        from hv.network import ops
        from hv.runtime import domains

        self._interfaces(c.id)  # its tap on the bridge (the others exist: idempotent)
        nic = ops.interface_for(ep)
        domains.attach_nic(self.libvirt, c.domain, nic.to_xml(), nic.mac)
        try:
            self._guest_nics(c, ops.guest_nics(self.paths.state_root(), c.id))
        except BaseException:
            with contextlib.suppress(HvError, OSError):
                domains.detach_nic(self.libvirt, c.domain, nic.to_xml(), nic.mac)
            raise

    def _unplug(self, c: Container, ep) -> None:
        from hv.network import ops
        from hv.runtime import domains

        nic = ops.interface_for(ep)
        left = [n for n in ops.guest_nics(self.paths.state_root(), c.id) if n.mac != ep.mac]
        with contextlib.suppress(HvError, OSError, EOFError):  # the unplug cuts it anyway
            self._guest_nics(c, left)
        domains.detach_nic(self.libvirt, c.domain, nic.to_xml(), nic.mac)

    def _guest_nics(self, c: Container, nics: list) -> None:
        """The agent's `nics` verb: the guest's hv NICs made to match `nics`."""
        from hv import guestops
        from hv.errors import RuntimeFailure
        from hv.guest.attach import session_command
        from hv.guest.seed import nics_file

        agent = guestops.connect_agent(self.ctx, c, timeout=30)
        try:
            code, _, err = agent.call(session_command("nics"), stdin=nics_file(nics),
                                      timeout=30)
        finally:
            agent.close()
        if code != 0:
            raise RuntimeFailure(f"the guest could not configure its NICs: "
                                 f"{err.decode(errors='replace').strip() or f'exit {code}'}",
                                 hint="stop and start the container: its NICs are then "
                                 "made at boot", exit_code=1)

    # --- what create / start / rm do ---------------------------------------------------------

    @staticmethod
    def _plan_dns(opts: RunOptions) -> tuple[list[str], list[str], list[str]]:
        """`--dns`, `--dns-search`, `--dns-option` checked as Docker's flags check them."""
        import ipaddress

        for ip in opts.dns:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise UsageError(f'invalid argument "{ip}" for "--dns" flag: {ip} is not an '
                                 "ip address", hint="give a nameserver's address, e.g. "
                                 "--dns 192.0.2.53", exit_code=125) from None
        for flag, values in (("--dns-search", opts.dns_search),
                             ("--dns-option", opts.dns_options)):
            for v in values:
                if not v or len(v) > 255 or any(ch.isspace() for ch in v) or \
                        (flag == "--dns-search" and v != "." and
                         (v.startswith(("-", ".")) or ".." in v)):
                    raise UsageError(f'invalid argument "{v}" for "{flag}" flag',
                                     hint="one domain (or option) per flag, no spaces",
                                     exit_code=125)
        # "." alone means "no search domain" (Docker's)
        search = [] if opts.dns_search == ["."] else list(opts.dns_search)
        return list(opts.dns), search, list(opts.dns_options)

    def _plan_networks(self, opts: RunOptions) -> tuple[list[str], list[str]]:
        """Before anything is made: the networks to join (checked to exist) and the
        `--add-host` entries. Errors here are `run`'s: exit 125."""
        from hv.network import datapath, ops
        from hv.network.store import HostNetworkRefused

        try:
            add_hosts = [":".join(parse_add_host(h)) for h in opts.add_hosts]
            names = list(dict.fromkeys(opts.networks))
            if not names:
                if not datapath.can_admin():  # unprivileged: user-mode NIC only (documented)
                    if opts.network_aliases or opts.ip:
                        self._require_admin()
                    return [], add_hosts
                names = ["bridge"]
            root = self.paths.state_root()
            nets = [ops.get(root, n) for n in names]
            if any(n.name == "none" for n in nets) and len(nets) > 1:
                raise Conflict("container cannot be connected to multiple networks with one "
                               "of the networks in private (none) mode",
                               hint="give --network none alone")
            if any(n.driver == "bridge" for n in nets):
                self._require_admin()
            first = nets[0]
            if opts.network_aliases and not first.user_defined:
                raise UsageError("network-scoped alias is supported only for containers in "
                                 "user defined networks", hint="create a network with 'hv "
                                 "network create NAME' and use --network NAME")
            return [n.name for n in nets], add_hosts
        except HostNetworkRefused as e:
            raise HostNetworkRefused(e.message, e.hint, exit_code=125) from None
        except HvError as e:
            e.exit_code = 125
            raise

    def _join_networks(self, record: Record, opts: RunOptions) -> None:
        """The endpoints (records) of a new container; undone by `_leave_networks`."""
        from hv.network import ops

        root = self.paths.state_root()
        try:
            for i, name in enumerate(record.networks):
                ops.connect(root, name, record.id, record.name,
                            opts.network_aliases if i == 0 else (), opts.ip if i == 0 else None)
        except HvError as e:
            with contextlib.suppress(HvError, OSError):
                ops.release(root, record.id)
            e.exit_code = 125
            raise

    def _name_endpoints(self, record: Record) -> None:
        """A claimed pooled VM's endpoints (made nameless when it was pooled) get the
        container's name."""
        from hv.network import ops

        if record.networks:
            with contextlib.suppress(HvError, OSError):
                ops.rename(self.paths.state_root(), record.id, record.name)

    def _interfaces(self, cid: str) -> list:
        """The container's NICs on hv networks, their bridges and taps made (idempotent)."""
        from hv.network import ops

        try:
            return ops.prepare_taps(self.paths.state_root(), cid)
        except HvError as e:
            e.exit_code = 125
            raise

    def _restricted(self, record: Record) -> bool:
        """The user-mode NIC cut off from the host and the outside (`--internal` networks
        only, or `none`); its forwards (agent, -p) keep working."""
        from hv.network import ops

        return bool(record.networks) and not ops.outbound_allowed(self.paths.state_root(),
                                                                   record.id)

    @staticmethod
    def _nics_mark(interfaces: list, restrict: bool) -> dict:
        """What the domain was defined with (`nics.defined`), to tell at a start whether a
        connect/disconnect since then needs the domain defined again."""
        return {"nics": [[i.tap, i.mac] for i in interfaces], "restrict": restrict,
                "layout": 2}  # 2: the agent's own user-mode NIC (a domain before it: redefined)

    def _guest_network(self, record: Record) -> tuple[list | None, str | None]:
        """The seed's `nics` and `hosts` (None, None: the agent's defaults)."""
        from hv.network import hosts, ops

        root = self.paths.state_root()
        nics = ops.guest_nics(root, record.id) if record.networks else []
        if not record.networks and not record.add_hosts:
            return None, None
        text = (ops.hosts_file(root, record.id, record.hostname) if record.networks
                else hosts.render(record.hostname, hosts.NO_NETWORK_ADDRESS, []))
        return nics or None, text + _extra_hosts(record.add_hosts)

    def _embedded_dns(self, record: Record) -> str | None:
        """On a user-defined network Docker's containers ask its embedded DNS (127.0.0.11),
        which knows the peers and forwards the rest: hv's agent does the same from the
        container's /etc/hosts. The upstream it forwards to (None: no embedded DNS): the
        first IPv4 `--dns`, else the user-mode NIC's resolver; 0.0.0.0 when the container
        has no way out (`--internal` only)."""
        import ipaddress

        from hv.network import ops

        if all(n in ("bridge", "none") for n in record.networks):  # every default `run`:
            return None  # no user-defined network, no need to read the network records
        if not any(n.user_defined
                   for n, _ in ops.endpoints_of(self.paths.state_root(), record.id)):
            return None
        if self._restricted(record):
            return "0.0.0.0"  # no way out: the resolver answers SERVFAIL for other names
        for ip in record.dns:
            with contextlib.suppress(ValueError):
                return str(ipaddress.IPv4Address(ip))
        return "10.0.2.3"

    def _push_hosts(self, cids: Iterable[str]) -> None:
        """Send each running container in `cids` its /etc/hosts as it is now (the agent's
        `hosts` verb). Best effort: a peer going down meanwhile needs none."""
        cids = set(cids)
        if not cids:
            return
        from hv import guestops
        from hv.guest.attach import session_command
        from hv.network import ops

        root = self.paths.state_root()
        for c in self._list(check=False):
            if c.id not in cids or not c.active:
                continue
            text = ops.hosts_file(root, c.id, c.record.hostname) + _extra_hosts(
                c.record.add_hosts)
            with contextlib.suppress(HvError, OSError, EOFError):
                agent = guestops.connect_agent(self.ctx, c, timeout=30)
                try:
                    agent.call(session_command("hosts"), stdin=text.encode(), timeout=30)
                finally:
                    agent.close()

    def _leave_networks(self, c: Container) -> None:
        """At rm: the endpoints, taps and idle bridges go; peers stop resolving it."""
        from hv.network import ops

        root = self.paths.state_root()
        with contextlib.suppress(HvError, OSError):
            peers = ops.peers(root, c.id) - {c.id}
            if ops.release(root, c.id):
                self._push_hosts(peers)

    def _network_xml(self, c: Container) -> str | None:
        """At a start: the NICs' taps made again (a stop or a host reboot removed them);
        when `network connect`/`disconnect` changed them since the domain was defined, its
        XML again (None: the defined one is right)."""
        from hv.engine.create import _domain_xml, _guest_assets
        from hv.runtime.accel import detect

        interfaces = self._interfaces(c.id)
        wanted = self._nics_mark(interfaces, self._restricted(c.record))
        mark = self.paths.container_dir(c.id) / "nics.defined"
        try:
            defined = json.loads(mark.read_text())
        except (OSError, ValueError):
            defined = None
        if isinstance(defined, list):  # an older hv's mark: the NICs alone, never restricted
            defined = {"nics": defined, "restrict": False}
        if defined == wanted:
            return None
        xml = _domain_xml(self.ctx, self.volumes, c.record, detect(self.paths, self.config.accel),
                          _guest_assets(self.paths, self.config.firmware), interfaces,
                          restrict=wanted["restrict"])
        mark.write_text(json.dumps(wanted))
        return xml

    def _forget_vanished(self, existing: list[Container]) -> None:
        """Endpoints of containers that are gone without an hv `rm` (an exited `--rm -d`
        collected by a listing, a state folder removed by hand): released, so `network rm`
        and the peers' names agree with `ps -a`. A container being made has a folder and
        no domain yet: kept."""
        from hv.network import ops

        root = self.paths.state_root()
        known = {c.id for c in existing} | self.pool_ids()
        with contextlib.suppress(OSError):
            known |= {p.name.lstrip(".") for p in self.paths.containers_dir().iterdir()}
        stale = {cid for n in ops.list_networks(root) for cid in n.endpoints} - known
        for cid in stale:
            peers = ops.peers(root, cid) - {cid}
            with contextlib.suppress(HvError, OSError):
                ops.release(root, cid)
            self._push_hosts(peers - stale)

    def _drop_taps(self, c: Container) -> None:
        """After the VM is gone (stop, kill): its taps go (the records stay). Cheap: ioctls;
        EBUSY while a QEMU still holds one leaves it to the next start or rm."""
        if not c.record.networks:
            return
        from hv.network import ops

        with contextlib.suppress(HvError, OSError):
            ops.teardown_taps(self.paths.state_root(), c.id)

    def _require_admin(self, exit_code: int = 125) -> None:
        from hv.network import datapath

        if not datapath.can_admin():
            raise datapath.DatapathError(
                "container networks need CAP_NET_ADMIN: hv makes a bridge and taps on the "
                "host", hint="run hv as root, or leave --network out (user-mode networking "
                "only)", exit_code=exit_code)


def _extra_hosts(add_hosts: list[str]) -> str:
    """`--add-host` lines, after the network's (Docker appends them to /etc/hosts)."""
    out = []
    for item in add_hosts:
        name, _, ip = item.partition(":")
        out.append(f"{ip}\t{name}\n")
    return "".join(out)
