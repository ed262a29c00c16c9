#!/bin/bash
# hv's guest kernel configuration: what a container VM needs, on top of `make tinyconfig`.
#
#   cd LINUX-SOURCE && make tinyconfig && .../config.sh && make olddefconfig
#   .../config.sh --check        # after olddefconfig: every wanted symbol really is set
#
# Everything is built in (no modules, no module loading in the guest). Symbols are grouped
# by purpose; `y` enables, `n` disables, `val` sets a value. A `y` that olddefconfig drops
# (an unmet dependency) is an error in --check mode, so a typo or a renamed symbol cannot
# silently produce a kernel without, say, virtio-net.
set -euo pipefail

CHECK=0
[ "${1:-}" = --check ] && CHECK=1
[ -x scripts/config ] && [ -f .config ] || { echo "config.sh: run it in a configured kernel tree" >&2; exit 1; }

bad=0
y() {
	local s
	for s in "$@"; do
		if [ $CHECK = 1 ]; then
			grep -qx "CONFIG_$s=y" .config || { echo "config.sh: CONFIG_$s is not =y" >&2; bad=1; }
		else scripts/config --enable "$s"; fi
	done
}
n() {
	local s
	for s in "$@"; do
		if [ $CHECK = 1 ]; then
			! grep -q "^CONFIG_$s=" .config || { echo "config.sh: CONFIG_$s should be off" >&2; bad=1; }
		else scripts/config --disable "$s"; fi
	done
}
val() { # SYMBOL VALUE (strings quoted by the caller's choice of --set-str/--set-val)
	if [ $CHECK = 1 ]; then
		grep -qx "CONFIG_$1=$2" .config || grep -qx "CONFIG_$1=\"$2\"" .config ||
			{ echo "config.sh: CONFIG_$1 is not $2" >&2; bad=1; }
	elif [[ $2 =~ ^[0-9]+$ ]]; then scripts/config --set-val "$1" "$2"
	else scripts/config --set-str "$1" "$2"; fi
}

# --- Identity and build ----------------------------------------------------------------------
val LOCALVERSION "-hv"           # uname -r: 6.1.N-hv
n LOCALVERSION_AUTO
y IKCONFIG IKCONFIG_PROC         # /proc/config.gz: what this kernel is, from inside the guest
n MODULES                        # everything built in; the initramfs carries no modules
y CC_OPTIMIZE_FOR_PERFORMANCE    # tinyconfig picks -Os; -O2 runs fewer instructions under TCG
n CC_OPTIMIZE_FOR_SIZE
y KERNEL_GZIP                    # bzImage payload (tinyconfig's xz is slow to unpack under TCG)
n KERNEL_XZ
y SLUB                           # tinyconfig's SLOB rules out kernel memory accounting (memcg)
n SLOB
# Every byte of the image costs each VM twice (QEMU keeps vmlinuz mapped for the VM's life, the
# guest holds its copy): no ORC unwind tables (2.2 MB; oops traces are guessed from the stack
# instead), no SLUB debugging code (the slub_debug= option).
n UNWINDER_ORC
y UNWINDER_GUESS
n SLUB_DEBUG

# --- Processor, platform, paravirtualisation --------------------------------------------------
y 64BIT SMP
val NR_CPUS 64
y HYPERVISOR_GUEST PARAVIRT KVM_GUEST PARAVIRT_CLOCK PARAVIRT_SPINLOCKS
y PVH                            # the PVH ELF note: vmlinux boots directly (qboot, microvm)
y X86_TSC X86_LOCAL_APIC X86_IO_APIC X86_MPPARSE X86_X2APIC
y HPET_TIMER HPET_EMULATE_RTC    # the TSC calibrates against the HPET under TCG
y HIGH_RES_TIMERS NO_HZ_IDLE
y DMI                            # dmidecode, /sys/class/dmi
y MTRR X86_PAT                       # PAT: correct caching types for virtio/PCI BARs
y RELOCATABLE

# ACPI: power-off on -M pc, interrupt routing of PCI devices, HPET discovery. The optional
# ACPI device drivers (fan, thermal, battery, video, ...) are left out: nothing to drive.
y ACPI
n ACPI_FAN ACPI_THERMAL ACPI_BATTERY ACPI_AC ACPI_VIDEO ACPI_DOCK ACPI_TABLE_UPGRADE
n ACPI_DEBUGGER ACPI_PROCESSOR_AGGREGATOR ACPI_HED ACPI_TAD ACPI_CUSTOM_METHOD
y ACPI_BUTTON                    # the power button event (libvirt's virsh shutdown --mode acpi)
n SCHED_MC_PRIO ACPI_PROCESSOR CPU_FREQ X86_INTEL_PSTATE   # no frequency scaling or C-states
# Host-hardware probes that find nothing in a VM but cost boot time under TCG.
n PERF_EVENTS_INTEL_UNCORE PERF_EVENTS_INTEL_RAPL PERF_EVENTS_INTEL_CSTATE THERMAL
n X86_5LEVEL MTRR_SANITIZER PNP_DEBUG_MESSAGES HID
n HW_RANDOM_INTEL HW_RANDOM_AMD HW_RANDOM_VIA

# --- Core kernel features a container expects (tinyconfig turns these EXPERT options off) ----
y MULTIUSER SYSFS_SYSCALL FHANDLE POSIX_TIMERS PRINTK BUG COREDUMP ELF_CORE BASE_FULL
y FUTEX EPOLL SIGNALFD TIMERFD EVENTFD SHMEM AIO IO_URING ADVISE_SYSCALLS MEMBARRIER
y FILE_LOCKING CROSS_MEMORY_ATTACH RSEQ KALLSYMS
y SYSVIPC POSIX_MQUEUE
y SECCOMP SECCOMP_FILTER
y BPF_SYSCALL
y INOTIFY_USER FANOTIFY DNOTIFY
y BINFMT_ELF BINFMT_SCRIPT
y PROC_FS PROC_SYSCTL PROC_PAGE_MONITOR SYSFS
y VM_EVENT_COUNTERS
y TMPFS TMPFS_POSIX_ACL TMPFS_XATTR
y DEVTMPFS DEVTMPFS_MOUNT
y BLK_DEV_INITRD RD_GZIP RD_LZ4 RD_ZSTD RD_XZ   # the agent's initramfs (lz4 by default)
n RD_BZIP2 RD_LZMA RD_LZO
y EARLY_PRINTK

# --- Control groups (v1 and v2 controllers) and namespaces ------------------------------------
y CGROUPS CGROUP_SCHED FAIR_GROUP_SCHED CFS_BANDWIDTH
y MEMCG CGROUP_PIDS CGROUP_DEVICE CGROUP_FREEZER CPUSETS PROC_PID_CPUSET CGROUP_CPUACCT
y BLK_CGROUP CGROUP_BPF
y NAMESPACES UTS_NS IPC_NS USER_NS PID_NS NET_NS

# --- Terminals: serial console on ttyS0, ptys, and a VT keyboard for ctrl-alt-del --------------
y TTY UNIX98_PTYS
n LEGACY_PTYS
y SERIAL_8250 SERIAL_8250_CONSOLE
val SERIAL_8250_NR_UARTS 4
val SERIAL_8250_RUNTIME_UARTS 1  # ttyS0 only: do not probe ports that are not there
n SERIAL_8250_EXTENDED SERIAL_8250_PCI SERIAL_8250_LPSS SERIAL_8250_MID SERIAL_8250_PERICOM
# hv stops a container with ctrl-alt-del (virsh send-key): i8042 -> atkbd -> VT keyboard ->
# ctrl_alt_del() -> SIGINT for PID 1. No VGA console: the dummy console is enough.
y VT INPUT INPUT_KEYBOARD KEYBOARD_ATKBD SERIO SERIO_I8042
n VGA_CONSOLE INPUT_MOUSE INPUT_MOUSEDEV SERIO_SERPORT
y RTC_CLASS RTC_DRV_CMOS RTC_HCTOSYS   # wall clock from the CMOS RTC at boot

# --- PCI and virtio (PCI legacy+modern, and MMIO for -M microvm) -------------------------------
y PCI PCI_MSI
y VIRTIO_MENU VIRTIO_PCI VIRTIO_PCI_LEGACY
y VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES   # microvm passes virtio_mmio.device= itself
y VIRTIO_BALLOON
y BLK_DEV VIRTIO_BLK BLK_DEV_LOOP
y VIRTIO_CONSOLE HVC_DRIVER       # hvc console and the virtio-serial ports hv.log/hv.status
y HW_RANDOM HW_RANDOM_VIRTIO
y NETDEVICES NET_CORE VIRTIO_NET VETH
# `network connect|disconnect` of a running container: libvirt hot-plugs a virtio-net NIC into a
# slot of pc's bus 0, announced to the guest through ACPI (QEMU's PIIX4 hot-plug)
y HOTPLUG_PCI HOTPLUG_PCI_ACPI
n ETHERNET WLAN WIRELESS

# --- Networking ------------------------------------------------------------------------------
y NET UNIX INET IPV6 PACKET
y IP_MULTICAST SYN_COOKIES
y INET_DIAG INET_TCP_DIAG INET_UDP_DIAG UNIX_DIAG PACKET_DIAG NETLINK_DIAG   # ss
y VSOCKETS VIRTIO_VSOCKETS
y NET_9P NET_9P_VIRTIO
n NET_9P_FD                       # only transport wanted is virtio
# Netfilter is left out (optional for a container VM; adds build time and boot work).

# --- Filesystems -----------------------------------------------------------------------------
y BLOCK
y EXT4_FS EXT4_FS_POSIX_ACL EXT4_FS_SECURITY   # CRC32C for metadata_csum comes selected
y CRYPTO_CRC32C
y ISO9660_FS JOLIET ZISOFS                     # the seed disk (Rock Ridge is always in)
y OVERLAY_FS
y FUSE_FS VIRTIO_FS
y 9P_FS 9P_FS_POSIX_ACL 9P_FS_SECURITY
y FS_POSIX_ACL
y AUTOFS_FS
n CRYPTO_MANAGER_EXTRA_TESTS

if [ $CHECK = 1 ]; then
	! grep -q '=m$' .config || { echo "config.sh: modules in .config" >&2; bad=1; }
	exit $bad
fi
