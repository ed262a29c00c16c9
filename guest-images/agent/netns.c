/*
 * hv guest agent: the container's NICs and its network namespace (/run/hv/netns).
 *
 * The workload sees only its own NICs, in that namespace: its networks' NICs and, when it
 * may go out, its user-mode NIC (USER_MAC: outbound traffic and -p). The agent's user-mode
 * NIC (AGENT_MAC, restrict=on: hv's SSH and nothing else) stays in the root namespace with
 * sshd and PID 1. A guest whose domain has no agent NIC (defined by an older hv) gets no
 * namespace: one user-mode NIC for everything, as before. Written in C, not busybox sh: the
 * ~25 processes a script forks cost ~0.1 s of every boot under TCG.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <linux/magic.h>
#include <unistd.h>

#include "agent.h"

#define AGENT_MAC "52:54:00:68:76:01"
#define USER_MAC "52:54:00:68:76:02"
#define NICS_FILE RUN_DIR "/nics"
#define MAX_NICS 64

/* The container's namespace, when /init made one (a namespace is mounted on the file). */
static int open_netns(void)
{
	int fd = open(NETNS_FILE, O_RDONLY | O_CLOEXEC);
	struct statfs st;
	if (fd >= 0 && (fstatfs(fd, &st) || st.f_type != NSFS_MAGIC)) {
		close(fd);
		fd = -1;
	}
	return fd;
}

/* Join the container's namespace, if any: 0, or -1 with errno. */
int enter_netns(void)
{
	int fd = open_netns();
	if (fd < 0)
		return 0;
	int rc = setns(fd, CLONE_NEWNET);
	int e = errno;
	close(fd);
	errno = e;
	return rc;
}

struct nic {
	char mac[18];
	char addr[64]; /* ADDRESS/PREFIX */
};

/* The seed's `nics` format: MAC NUL ADDRESS/PREFIX NUL, each NIC. */
static int parse_list(char *buf, size_t len, struct nic *out)
{
	int n = 0;
	size_t i = 0;
	while (i < len && n < MAX_NICS) {
		const char *mac = buf + i;
		i += strnlen(mac, len - i) + 1;
		if (i >= len)
			break;
		const char *addr = buf + i;
		i += strnlen(addr, len - i) + 1;
		snprintf(out[n].mac, sizeof out[n].mac, "%s", mac);
		snprintf(out[n].addr, sizeof out[n].addr, "%s", addr);
		n++;
	}
	return n;
}

static int listed(const struct nic *l, int n, const char *mac)
{
	for (int i = 0; i < n; i++)
		if (strcasecmp(l[i].mac, mac) == 0)
			return 1;
	return 0;
}

/* An Ethernet NIC's MAC (lo, sit0 and the like have none): 0, or -1. */
static int mac_of(int sock, const char *name, char out[18])
{
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(sock, SIOCGIFHWADDR, &ifr) || ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER)
		return -1;
	const unsigned char *m = (const unsigned char *)ifr.ifr_hwaddr.sa_data;
	snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
	return 0;
}

/* The NIC with `mac` in this namespace (its name in `name`), or, with `mac` NULL, the first
 * Ethernet NIC whose MAC is not in `skip`: its index, or 0. */
static unsigned find_nic(int sock, const char *mac, const struct nic *skip, int nskip,
			 char name[IFNAMSIZ])
{
	struct if_nameindex *all = if_nameindex(), *p;
	unsigned found = 0;
	for (p = all; p && p->if_index; p++) {
		char m[18];
		if (mac_of(sock, p->if_name, m))
			continue;
		if (mac ? strcasecmp(m, mac) == 0 : !listed(skip, nskip, m)) {
			found = p->if_index;
			snprintf(name, IFNAMSIZ, "%s", p->if_name);
			break;
		}
	}
	if (all)
		if_freenameindex(all);
	return found;
}

/* find_nic for a NIC that may still be hot-plugging: up to 10 s. */
static unsigned await_nic(int sock, const char *mac, char name[IFNAMSIZ])
{
	for (int tries = 0; tries < 500; tries++) {
		unsigned idx = find_nic(sock, mac, NULL, 0, name);
		if (idx)
			return idx;
		usleep(20000);
	}
	return 0;
}

/* RTM_NEWLINK on an existing index with IFLA_NET_NS_FD: the NIC moves (`rename`: under
 * that name, when its own is taken there). */
static int move_link(int nl, int nsfd, unsigned idx, const char *rename)
{
	struct {
		struct nlmsghdr nh;
		struct ifinfomsg ifi;
		char attrs[RTA_SPACE(sizeof(int)) + RTA_SPACE(IFNAMSIZ)];
	} req;
	memset(&req, 0, sizeof req);
	req.nh.nlmsg_len = NLMSG_LENGTH(sizeof req.ifi) + RTA_SPACE(sizeof(int));
	req.nh.nlmsg_type = RTM_NEWLINK;
	req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	req.ifi.ifi_family = AF_UNSPEC;
	req.ifi.ifi_index = (int)idx;
	struct rtattr *rta = (struct rtattr *)req.attrs;
	rta->rta_type = IFLA_NET_NS_FD;
	rta->rta_len = RTA_LENGTH(sizeof(int));
	memcpy(RTA_DATA(rta), &nsfd, sizeof(int));
	if (rename) {
		rta = (struct rtattr *)(req.attrs + RTA_SPACE(sizeof(int)));
		rta->rta_type = IFLA_IFNAME;
		rta->rta_len = RTA_LENGTH(strlen(rename) + 1);
		memcpy(RTA_DATA(rta), rename, strlen(rename) + 1);
		req.nh.nlmsg_len += RTA_SPACE(strlen(rename) + 1);
	}
	if (send(nl, &req, req.nh.nlmsg_len, 0) < 0)
		return -1;
	char buf[4096];
	ssize_t n = recv(nl, buf, sizeof buf, 0);
	struct nlmsghdr *h = (struct nlmsghdr *)buf;
	if (n < (ssize_t)NLMSG_LENGTH(sizeof(struct nlmsgerr)) || h->nlmsg_type != NLMSG_ERROR) {
		errno = EPROTO;
		return -1;
	}
	int err = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
	errno = -err;
	return err ? -1 : 0;
}

/* Into the namespace at `nsfd`: a hot-plugged NIC may have taken a name in the root
 * namespace (eth0) that a NIC moved earlier has there, and then gets the first free ethN. */
static int move_nic(int nl, int nsfd, unsigned idx, const char *name)
{
	int r = move_link(nl, nsfd, idx, NULL);
	for (int n = 0; r && errno == EEXIST && n < 64; n++) {
		char other[IFNAMSIZ];
		snprintf(other, sizeof other, "eth%d", n);
		r = move_link(nl, nsfd, idx, other);
	}
	if (r)
		fprintf(stderr, "cannot move %s into the container's network namespace: %s\n", name,
			strerror(errno));
	return r;
}

static int set_up(int sock, const char *name, int up)
{
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(sock, SIOCGIFFLAGS, &ifr))
		return -1;
	ifr.ifr_flags = (short)(up ? ifr.ifr_flags | IFF_UP : ifr.ifr_flags & ~IFF_UP);
	return ioctl(sock, SIOCSIFFLAGS, &ifr);
}

static void set_sin(struct sockaddr *sa, in_addr_t a)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = a};
	memcpy(sa, &sin, sizeof sin);
}

/* ADDRESS/PREFIX on `name`, IPv6 off (EnableIPv6 false), link up. The address 0.0.0.0
 * removes the NIC's IPv4 address. The kernel adds the subnet's route and nothing else. */
static int give_address(int sock, const char *name, const char *cidr, int quiet)
{
	char ip[64];
	snprintf(ip, sizeof ip, "%s", cidr);
	char *slash = strchr(ip, '/');
	int prefix = slash ? atoi(slash + 1) : 32;
	if (slash)
		*slash = 0;
	struct in_addr a;
	if (!inet_aton(ip, &a) || prefix < 0 || prefix > 32) {
		fprintf(stderr, "cannot give %s the address %s: not ADDRESS/PREFIX\n", name, cidr);
		return -1;
	}
	char path[96];
	snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/disable_ipv6", name);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, "1", 1) < 0) { /* no IPv6 at all: nothing to turn off */
		}
		close(fd);
	}
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	set_sin(&ifr.ifr_addr, a.s_addr);
	int rc = set_up(sock, name, 1) || ioctl(sock, SIOCSIFADDR, &ifr);
	if (!rc && prefix) {
		set_sin(&ifr.ifr_netmask, htonl(prefix == 32 ? 0xffffffffu : ~(0xffffffffu >> prefix)));
		rc = ioctl(sock, SIOCSIFNETMASK, &ifr);
	}
	if (rc && !quiet)
		fprintf(stderr, "cannot give %s the address %s: %s\n", name, cidr, strerror(errno));
	return rc ? -1 : 0;
}

static int has_address(int sock, const char *name, const char *cidr)
{
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(sock, SIOCGIFADDR, &ifr))
		return 0;
	char ip[64];
	snprintf(ip, sizeof ip, "%s", cidr);
	ip[strcspn(ip, "/")] = 0;
	return strcmp(inet_ntoa(((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr), ip) == 0;
}

/* The user-mode NIC: SLIRP's guest address, and the way out through its gateway. */
static void user_nic(int sock, const char *name)
{
	if (give_address(sock, name, "10.0.2.15/24", 1))
		return;
	struct rtentry rt = {0};
	set_sin(&rt.rt_dst, INADDR_ANY);
	set_sin(&rt.rt_genmask, INADDR_ANY);
	set_sin(&rt.rt_gateway, inet_addr("10.0.2.2"));
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	ioctl(sock, SIOCADDRT, &rt);
}

/* A persistent namespace, the way `ip netns add` makes one: unshare, bind-mount our own
 * namespace file at NETNS_FILE, then back to the root namespace. */
static int make_netns(void)
{
	int root_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	int f = open(NETNS_FILE, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (f >= 0)
		close(f);
	if (root_ns < 0 || f < 0 || unshare(CLONE_NEWNET) ||
	    mount("/proc/self/ns/net", NETNS_FILE, NULL, MS_BIND, NULL) ||
	    setns(root_ns, CLONE_NEWNET)) {
		fprintf(stderr, "cannot make the container's network namespace: %s\n",
			strerror(errno));
		return -1;
	}
	close(root_ns);
	return 0;
}

static char *read_fd(int fd, size_t *len)
{
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	ssize_t r;
	while (buf && (r = read(fd, buf + n, cap - n)) > 0) {
		n += (size_t)r;
		if (n == cap)
			buf = realloc(buf, cap *= 2);
	}
	*len = n;
	return buf;
}

/* hv-init --nics [--boot]: stdin, the container's hv NICs as they are now (the seed's `nics`
 * format); /run/hv/nics, the list as it was. --boot (from /init): the namespace made, every
 * NIC but the agent's moved into it, the user-mode NICs given their address. Otherwise (the
 * agent's `nics` verb, at connect/disconnect of a running container): a NIC no longer
 * listed loses its address and goes down before the host unplugs it; a newly listed one is
 * moved and given its address once its hot-plugged device shows up (within 10 s). */
int nics_main(int argc, char **argv)
{
	int boot = argc > 2 && strcmp(argv[2], "--boot") == 0;
	static struct nic now[MAX_NICS], was[MAX_NICS];
	size_t len = 0, olen = 0;
	char *buf = read_fd(0, &len), *obuf = NULL;
	int n = parse_list(buf, len, now), no = 0;
	int ofd = boot ? -1 : open(NICS_FILE, O_RDONLY | O_CLOEXEC);
	if (ofd >= 0) {
		obuf = read_fd(ofd, &olen);
		no = parse_list(obuf, olen, was);
		close(ofd);
	}
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (sock < 0 || nl < 0) {
		fprintf(stderr, "cannot open sockets: %s\n", strerror(errno));
		return 1;
	}
	char name[IFNAMSIZ];
	int nsfd = -1;
	if (boot) {
		set_up(sock, "lo", 1);
		if (find_nic(sock, AGENT_MAC, NULL, 0, name)) {
			if (make_netns() || give_address(sock, name, "10.0.2.15/24", 0))
				return 1;
			nsfd = open(NETNS_FILE, O_RDONLY | O_CLOEXEC);
			struct nic agent = {AGENT_MAC, ""};
			unsigned idx;
			while ((idx = find_nic(sock, NULL, &agent, 1, name)))
				if (move_nic(nl, nsfd, idx, name))
					return 1;
		}
	} else if ((nsfd = open_netns()) >= 0) { /* (sshd's verb runs in the root namespace) */
		for (int i = 0; i < n; i++) {
			if (listed(was, no, now[i].mac))
				continue;
			unsigned idx = await_nic(sock, now[i].mac, name);
			if (!idx) {
				fprintf(stderr, "no NIC with MAC %s appeared\n", now[i].mac);
				return 1;
			}
			if (move_nic(nl, nsfd, idx, name))
				return 1;
		}
	}
	if (nsfd >= 0) { /* the rest happens where the workload lives */
		if (setns(nsfd, CLONE_NEWNET)) {
			fprintf(stderr, "cannot enter the container's network namespace: %s\n",
				strerror(errno));
			return 1;
		}
		close(sock);
		sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		set_up(sock, "lo", 1);
	}
	/* Leaving first: a network's address is gone from the guest before its NIC is. */
	for (int i = 0; i < no; i++)
		if (!listed(now, n, was[i].mac) && find_nic(sock, was[i].mac, NULL, 0, name)) {
			give_address(sock, name, "0.0.0.0/0", 1);
			set_up(sock, name, 0);
		}
	for (int i = 0; i < n; i++) {
		if (!await_nic(sock, now[i].mac, name)) {
			fprintf(stderr, "no NIC with MAC %s appeared\n", now[i].mac);
			return 1;
		}
		if (!has_address(sock, name, now[i].addr) &&
		    give_address(sock, name, now[i].addr, 0))
			return 1;
	}
	if (boot) { /* the way out: the workload's user-mode NIC, or an older domain's only one */
		if (find_nic(sock, USER_MAC, NULL, 0, name) ||
		    (nsfd < 0 && find_nic(sock, NULL, now, n, name)))
			user_nic(sock, name);
	}
	int wfd = open(NICS_FILE ".new", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (wfd < 0 || write_all(wfd, buf, len) || close(wfd) || rename(NICS_FILE ".new", NICS_FILE)) {
		fprintf(stderr, "cannot keep the NIC list in %s: %s\n", NICS_FILE, strerror(errno));
		return 1;
	}
	return 0;
}
