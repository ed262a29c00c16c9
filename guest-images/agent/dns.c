/*
 * `hv-init --dns HOSTS UPSTREAM [LISTEN]`: the container's resolver on 127.0.0.11:53 (UDP), as
 * Docker's embedded DNS on user-defined networks. A name in HOSTS (the container's
 * /etc/hosts, which the host rewrites when peers join, leave or are renamed) is answered
 * here: its IPv4 address for A, no data for AAAA (so resolvers do not wait for one);
 * any other query goes to UPSTREAM (the user-mode NIC's resolver, or --dns) and its
 * answer back to the asker (UPSTREAM 0.0.0.0, an --internal container: SERVFAIL at once,
 * not a client's time-out). The file is read again whenever it changed. UPSTREAM and
 * LISTEN are IPv4[:PORT] (LISTEN: for the host's unit test, tests/unit/test_guest_dns.py).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define DNS_PORT 53
#define LISTEN_ADDR "127.0.0.11"
#define PENDING 256 /* forwarded queries awaiting their answer */
#define TTL 600

struct pending {
	uint16_t id;            /* the asker's query id */
	uint16_t ours;          /* the id it went upstream with */
	struct sockaddr_in who; /* the asker */
	time_t at;              /* 0: free */
};

static char hosts_buf[1 << 20];
static const char *hosts_path;
static struct timespec hosts_mtime;
static off_t hosts_size = -1;

static void reload_hosts(void)
{
	struct stat st;
	if (stat(hosts_path, &st) != 0) {
		hosts_buf[0] = 0;
		return;
	}
	if (st.st_size == hosts_size && st.st_mtim.tv_sec == hosts_mtime.tv_sec &&
	    st.st_mtim.tv_nsec == hosts_mtime.tv_nsec)
		return;
	FILE *f = fopen(hosts_path, "r");
	if (!f)
		return;
	size_t n = fread(hosts_buf, 1, sizeof hosts_buf - 1, f);
	fclose(f);
	hosts_buf[n] = 0;
	hosts_size = st.st_size;
	hosts_mtime = st.st_mtim;
}

/* Is NAME (lowercase, no trailing dot) in the hosts file? Its first IPv4 address in *addr
 * (0 when the name has only IPv6 entries). */
static int lookup(const char *name, struct in_addr *addr)
{
	int found = 0;
	addr->s_addr = 0;
	for (char *line = hosts_buf; *line;) {
		char *end = strchr(line, '\n');
		size_t len = end ? (size_t)(end - line) : strlen(line);
		char copy[1024];
		if (len < sizeof copy) {
			memcpy(copy, line, len);
			copy[len] = 0;
			char *hash = strchr(copy, '#');
			if (hash)
				*hash = 0;
			char *save = NULL, *ip = strtok_r(copy, " \t", &save), *w;
			while (ip && (w = strtok_r(NULL, " \t", &save))) {
				if (strcasecmp(w, name) != 0)
					continue;
				struct in_addr a;
				if (inet_pton(AF_INET, ip, &a) == 1 && !addr->s_addr)
					*addr = a;
				found = 1;
			}
		}
		if (!end)
			break;
		line = end + 1;
	}
	return found;
}

/* The question's name (lowercased, dotted) and where the question ends; -1 if malformed. */
static int question(const unsigned char *q, size_t len, char *name, size_t cap,
		    uint16_t *qtype)
{
	size_t off = 12, out = 0;
	if (len < 12 || ((q[4] << 8) | q[5]) != 1)
		return -1;
	while (off < len && q[off]) {
		size_t l = q[off++];
		if (l > 63 || off + l > len || out + l + 2 > cap)
			return -1;
		if (out)
			name[out++] = '.';
		for (size_t i = 0; i < l; i++)
			name[out++] = (char)tolower(q[off + i]);
		off += l;
	}
	if (off + 5 > len)
		return -1;
	name[out] = 0;
	off++; /* the root label */
	*qtype = (uint16_t)((q[off] << 8) | q[off + 1]);
	return (int)off + 4;
}

static void answer(int fd, const unsigned char *q, int qend, uint16_t qtype,
		   struct in_addr addr, int rcode, const struct sockaddr_in *to)
{
	unsigned char r[512];
	if (qend + 16 > (int)sizeof r)
		return;
	memcpy(r, q, (size_t)qend);
	int with = (qtype == 1 || qtype == 255) && addr.s_addr;
	r[2] = (unsigned char)(0x84 | (q[2] & 0x01)); /* QR, AA, the asker's RD */
	r[3] = (unsigned char)(0x80 | rcode);           /* RA, the rcode */
	r[6] = 0, r[7] = (unsigned char)with;           /* ANCOUNT */
	memset(r + 8, 0, 4);                            /* NSCOUNT, ARCOUNT */
	size_t n = (size_t)qend;
	if (with) {
		unsigned char rr[16] = {0xc0, 12, 0, 1, 0, 1, 0, 0, TTL >> 8, TTL & 0xff, 0, 4};
		memcpy(rr + 12, &addr.s_addr, 4);
		memcpy(r + n, rr, sizeof rr);
		n += sizeof rr;
	}
	sendto(fd, r, n, 0, (const struct sockaddr *)to, sizeof *to);
}

static int parse_addr(const char *s, struct sockaddr_in *a)
{
	char ip[64];
	const char *colon = strchr(s, ':');
	size_t n = colon ? (size_t)(colon - s) : strlen(s);
	if (n >= sizeof ip)
		return -1;
	memcpy(ip, s, n);
	ip[n] = 0;
	long port = colon ? strtol(colon + 1, NULL, 10) : DNS_PORT;
	a->sin_family = AF_INET;
	a->sin_port = htons((uint16_t)port);
	return inet_pton(AF_INET, ip, &a->sin_addr) == 1 && port > 0 && port < 65536 ? 0 : -1;
}

int dns_main(int argc, char **argv)
{
	if (argc < 4 || argc > 5) {
		fprintf(stderr, "usage: hv-init --dns HOSTS UPSTREAM [LISTEN]\n");
		return 125;
	}
	hosts_path = argv[2];
	struct sockaddr_in up, me;
	if (parse_addr(argv[3], &up) || parse_addr(argc == 5 ? argv[4] : LISTEN_ADDR, &me)) {
		fprintf(stderr, "hv-init --dns: bad address %s\n", argc == 5 ? argv[4] : argv[3]);
		return 125;
	}
	if (enter_netns()) { /* the container's 127.0.0.11, and its way out */
		fprintf(stderr, "hv-init --dns: cannot enter the container's network namespace: %s\n",
			strerror(errno));
		return 1;
	}
	int lfd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int ufd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || ufd < 0 || bind(lfd, (struct sockaddr *)&me, sizeof me) != 0) {
		fprintf(stderr, "hv-init --dns: cannot listen: %s\n", strerror(errno));
		return 1;
	}
	printf("listening\n");
	fflush(stdout);
	static struct pending pend[PENDING];
	uint16_t next = (uint16_t)getpid();
	struct pollfd pf[2] = {{.fd = lfd, .events = POLLIN}, {.fd = ufd, .events = POLLIN}};
	for (;;) {
		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		unsigned char buf[4096];
		struct sockaddr_in from;
		socklen_t fl = sizeof from;
		if (pf[0].revents & POLLIN) {
			ssize_t n = recvfrom(lfd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
			if (n < 12 || (buf[2] & 0x80)) /* not a query */
				continue;
			char name[256];
			uint16_t qtype = 0;
			int qend = question(buf, (size_t)n, name, sizeof name, &qtype);
			struct in_addr addr;
			reload_hosts();
			if (qend > 0 && lookup(name, &addr)) {
				answer(lfd, buf, qend, qtype, addr, 0, &from);
			} else if (!up.sin_addr.s_addr) { /* no way out (--internal): SERVFAIL */
				if (qend > 0)
					answer(lfd, buf, qend, 0, (struct in_addr){0}, 2, &from);
			} else { /* forwarded under an id of ours */
				time_t t = time(NULL);
				struct pending *p = &pend[next % PENDING];
				if (p->at && t - p->at < 10) { /* full: the oldest slot still waits */
					continue;
				}
				p->id = (uint16_t)((buf[0] << 8) | buf[1]);
				p->who = from;
				p->at = t;
				p->ours = next;
				buf[0] = (unsigned char)(next >> 8), buf[1] = (unsigned char)next;
				next++;
				sendto(ufd, buf, (size_t)n, 0, (struct sockaddr *)&up, sizeof up);
			}
		}
		if (pf[1].revents & POLLIN) {
			fl = sizeof from;
			ssize_t n = recvfrom(ufd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
			if (n < 12 || from.sin_addr.s_addr != up.sin_addr.s_addr ||
			    from.sin_port != up.sin_port)
				continue;
			uint16_t id = (uint16_t)((buf[0] << 8) | buf[1]);
			struct pending *p = &pend[id % PENDING];
			if (!p->at || p->ours != id)
				continue;
			buf[0] = (unsigned char)(p->id >> 8), buf[1] = (unsigned char)p->id;
			sendto(lfd, buf, (size_t)n, 0, (struct sockaddr *)&p->who, sizeof p->who);
			p->at = 0;
		}
	}
}
