"""Container networks: L2 segments between VMs (a bridge per network, a tap per NIC), with
Docker's records, addresses and names. The engine calls `hv.network.ops`; design in
docs/networks.md."""
