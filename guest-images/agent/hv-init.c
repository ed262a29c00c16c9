/*
 * hv-init: PID 1 of an hv container VM, after /init has mounted everything.
 *
 *   hv-init [SEED_DIR [ROOT]]     run the container's main process (default /seed /c)
 *   hv-init --fail CODE MESSAGE   report an early failure, then power off
 *   hv-init --claim DIR           a pooled VM: say `pooled`, wait for the container's seed
 *                                 on the port "hv.claim", write its files into DIR
 *   hv-init --dns HOSTS UPSTREAM  the resolver at 127.0.0.11 on user-defined networks (dns.c)
 *   hv-init --session             the SSH ForceCommand (session.c); also as a login
 *   hv-init -c COMMAND            shell: sshd runs `SHELL -c COMMAND`
 *
 * The main process runs chrooted into ROOT with the argv/env/workdir/user read from
 * SEED_DIR (argv and env: NUL-terminated items; the rest: one plain value per file).
 * Its stdout/stderr (or its PTY, with `tty`) are pumped into framed records on the
 * virtio-serial port "hv.log" and to every client of the attach socket; "started",
 * "error" and "exited" lines go to the port "hv.status" (see DESIGN.md and README.md).
 * PID 1 forwards signals, reaps every zombie, and never exits: it powers the VM off.
 *
 * Built with: gcc -static -Os -o hv-init agent/[a-z-]*.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

static int status_fd = -1, log_fd = -1;

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Open the virtio-serial port called NAME (/sys/class/virtio-ports/vportXpY/name). The ports
 * are announced by the host asynchronously after the driver loads, so wait up to ~5 s. */
static int open_port_as(const char *name, int flags)
{
	for (int tries = 0; tries < 500; tries++) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			char path[300], buf[64] = "";
			snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
			int fd = open(path, O_RDONLY);
			if (fd < 0)
				continue;
			ssize_t n = read(fd, buf, sizeof buf - 1);
			close(fd);
			if (n > 0 && buf[n - 1] == '\n')
				buf[n - 1] = 0;
			if (strcmp(buf, name) == 0) {
				snprintf(path, sizeof path, "/dev/%s", e->d_name);
				fd = open(path, flags | O_CLOEXEC);
				if (fd >= 0) {
					closedir(d);
					return fd;
				}
			}
		}
		if (d)
			closedir(d);
		usleep(10000);
	}
	say("virtio-serial port %s not found", name);
	return -1;
}

static int open_port(const char *name)
{
	return open_port_as(name, O_WRONLY);
}

static void status_line(const char *fmt, ...)
{
	char buf[4200];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof buf - 2)
		n = sizeof buf - 2;
	buf[n++] = '\n';
	if (status_fd >= 0) {
		write_all(status_fd, buf, (size_t)n);
		fsync(status_fd);
	}
}

/* Unmount everything under ROOT, deepest first; remount ROOT read-only if it stays busy. */
static void unmount_root(const char *root)
{
	char *mnts[64];
	int n = 0;
	FILE *f = fopen("/proc/self/mounts", "re");
	char line[1024], dev[512], dir[512];
	size_t rl = strlen(root);
	while (f && fgets(line, sizeof line, f) && n < 64)
		if (sscanf(line, "%511s %511s", dev, dir) == 2 && strncmp(dir, root, rl) == 0 &&
		    (dir[rl] == 0 || dir[rl] == '/'))
			mnts[n++] = strdup(dir);
	if (f)
		fclose(f);
	while (n-- > 0)
		if (umount(mnts[n]) && strcmp(mnts[n], root) == 0)
			if (mount(NULL, root, NULL, MS_REMOUNT | MS_RDONLY, NULL))
				say("cannot unmount or remount %s read-only: %s", root,
				    strerror(errno));
}

static const char *root = ROOT_DIR;

/* End every process, unmount the container root, power off; "exited CODE NS" first unless
 * QUIET (maintenance boots never touch the container's recorded exit). Never returns. */
static void power_off(int code, int quiet)
{
	kill(-1, SIGKILL);
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	unmount_root(root);
	sync();
	if (!quiet)
		status_line("exited %d %llu", code, (unsigned long long)now_ns());
	sync();
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}

static void fail(int code, const char *msg)
{
	say("%s", msg);
	status_line("error %d %s", code, msg);
	power_off(code, 0);
}

/* Kill the container's processes (root ROOT or below): the main process's leftovers and
 * exec'd processes, not sshd and the attach relays (the agent's root). */
static void kill_container_processes(void)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	size_t rl = strlen(root);
	while (d && (e = readdir(d))) {
		if (!all_digits(e->d_name))
			continue;
		char path[300], link[512];
		snprintf(path, sizeof path, "/proc/%s/root", e->d_name);
		ssize_t n = readlink(path, link, sizeof link - 1);
		if (n <= 0)
			continue;
		link[n] = 0;
		if (strncmp(link, root, rl) == 0 && (link[rl] == 0 || link[rl] == '/'))
			kill(atoi(e->d_name), SIGKILL);
	}
	if (d)
		closedir(d);
}

/* Is sshd listening on TCP port 22 (IPv4)? */
static int sshd_listening(void)
{
	FILE *f = fopen("/proc/net/tcp", "re");
	char line[256], local[64], remote[64], st[8];
	int yes = 0;
	while (f && !yes && fgets(line, sizeof line, f))
		if (sscanf(line, " %*s %63s %63s %7s", local, remote, st) == 3) {
			size_t l = strlen(local);
			yes = l > 5 && strcmp(local + l - 5, ":0016") == 0 && strcmp(st, "0A") == 0;
		}
	if (f)
		fclose(f);
	return yes;
}

/* ---- the attach socket ----------------------------------------------------------------- */

#define MAX_CLIENTS 16
#define CLIENT_OUT_MAX (8u << 20) /* a client this far behind is dropped */
#define CLIENT_FRAME_MAX (1u << 20)
#define STDIN_BUF_MAX (64u << 10)

struct client {
	int fd;
	unsigned char *in, *out;
	size_t inlen, incap, outoff, outlen, outcap;
	int rd_closed, frames, frames_shut;
	uint64_t since_ms;
};
static struct client clients[MAX_CLIENTS];
static int nclients;

static int listen_fd = -1;
static int tty_mode, stdin_open;
static int master = -1;                    /* tty mode: PTY master (output + stdin) */
static int out_r = -1, err_r = -1;         /* pipe mode: the main process's stdout/stderr */
static int stdin_w = -1, stdin_eof;        /* where stdin frames go; close after the buffer */
static unsigned char *stdin_buf;
static size_t stdin_len;
static struct winsize winsz = {24, 80, 0, 0};

static void drop_client(int i)
{
	close(clients[i].fd);
	free(clients[i].in);
	free(clients[i].out);
	clients[i] = clients[--nclients];
}

static int flush_client(struct client *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0)
			return -1;
		c->outoff += (size_t)n;
	}
	if (c->outoff == c->outlen)
		c->outoff = c->outlen = 0;
	return 0;
}

static void client_queue(int i, const unsigned char *h, const void *data, size_t n)
{
	struct client *c = &clients[i];
	if (c->outoff && c->outoff == c->outlen)
		c->outoff = c->outlen = 0;
	size_t need = c->outlen + 16 + n;
	if (need > CLIENT_OUT_MAX) {
		drop_client(i);
		return;
	}
	if (need > c->outcap) {
		if (c->outoff) { /* compact first */
			memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
			c->outlen -= c->outoff, c->outoff = 0, need = c->outlen + 16 + n;
		}
		if (need > c->outcap) {
			size_t cap = c->outcap ? c->outcap : 65536;
			while (cap < need)
				cap *= 2;
			c->out = realloc(c->out, cap), c->outcap = cap;
		}
	}
	memcpy(c->out + c->outlen, h, 16);
	memcpy(c->out + c->outlen + 16, data, n);
	c->outlen += 16 + n;
	if (flush_client(c))
		drop_client(i);
}

/* One frame of output: to hv.log (stdout/stderr only) and to every attach client. */
static void emit(int type, const void *data, size_t n)
{
	unsigned char h[16];
	frame_header(h, type, (uint32_t)n, now_ns());
	if (log_fd >= 0 && (type == FR_STDOUT || type == FR_STDERR)) {
		static unsigned char buf[16 + FRAME_MAX];
		memcpy(buf, h, 16);
		memcpy(buf + 16, data, n);
		write_all(log_fd, buf, 16 + n);
	}
	for (int i = nclients - 1; i >= 0; i--)
		client_queue(i, h, data, n);
}

/* Read one chunk of output from FD as frames of TYPE; 0 at EOF (or EIO: PTY closed). */
static int pump(int fd, int type)
{
	static char buf[FRAME_MAX];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return 1;
	if (n <= 0)
		return 0;
	emit(type, buf, (size_t)n);
	return 1;
}

static void stdin_flush(void)
{
	while (stdin_w >= 0 && stdin_len > 0) {
		ssize_t n = write(stdin_w, stdin_buf, stdin_len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) { /* the process closed its stdin: discard */
			stdin_len = 0;
			if (!tty_mode) {
				close(stdin_w);
				stdin_w = -1;
			}
			return;
		}
		memmove(stdin_buf, stdin_buf + n, stdin_len - (size_t)n);
		stdin_len -= (size_t)n;
	}
	if (stdin_eof && stdin_len == 0 && stdin_w >= 0 && !tty_mode) {
		close(stdin_w);
		stdin_w = -1;
	}
}

static void handle_frame(int type, const unsigned char *p, size_t n)
{
	if (type == FR_STDIN && stdin_open && stdin_w >= 0 && !stdin_eof) {
		stdin_buf = realloc(stdin_buf, stdin_len + n);
		memcpy(stdin_buf + stdin_len, p, n);
		stdin_len += n;
		stdin_flush();
	} else if (type == FR_EOF && stdin_open && !tty_mode) {
		stdin_eof = 1;
		stdin_flush();
	} else if (type == FR_RESIZE) {
		char s[64];
		unsigned rows, cols;
		snprintf(s, sizeof s, "%.*s", (int)(n < 63 ? n : 63), (const char *)p);
		if (sscanf(s, "%u %u", &rows, &cols) == 2 && rows && cols && rows < 65536 &&
		    cols < 65536) {
			winsz.ws_row = (unsigned short)rows, winsz.ws_col = (unsigned short)cols;
			if (master >= 0)
				ioctl(master, TIOCSWINSZ, &winsz);
		}
	}
}

/* Read from client I; returns -1 when it must be dropped. */
static int client_read(int i)
{
	struct client *c = &clients[i];
	unsigned char buf[65536];
	ssize_t n = read(c->fd, buf, sizeof buf);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return 0;
	if (n < 0)
		return -1;
	if (n == 0) { /* half-closed: keep sending output until it goes away */
		c->rd_closed = 1;
		return 0;
	}
	if (c->inlen + (size_t)n > c->incap) {
		c->incap = c->inlen + (size_t)n + 65536;
		c->in = realloc(c->in, c->incap);
	}
	memcpy(c->in + c->inlen, buf, (size_t)n);
	c->inlen += (size_t)n;
	size_t pos = 0;
	while (c->inlen - pos >= 16) {
		unsigned char *h = c->in + pos;
		uint32_t len = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 | (uint32_t)h[6] << 8 | h[7];
		if (len > CLIENT_FRAME_MAX)
			return -1;
		if (c->inlen - pos < 16 + (size_t)len)
			break;
		handle_frame(h[0], h + 16, len);
		c->frames++;
		pos += 16 + len;
	}
	memmove(c->in, c->in + pos, c->inlen - pos);
	c->inlen -= pos;
	return 0;
}

static void attach_listen(void)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof a.sun_path, "%s", ATTACH_SOCK);
	unlink(ATTACH_SOCK);
	listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&a, sizeof a) ||
	    chmod(ATTACH_SOCK, 0600) || listen(listen_fd, 16)) {
		say("cannot listen on %s: %s", ATTACH_SOCK, strerror(errno));
		if (listen_fd >= 0)
			close(listen_fd);
		listen_fd = -1;
	}
}

static void attach_accept(void)
{
	int fd;
	while ((fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		if (nclients == MAX_CLIENTS) {
			close(fd);
			continue;
		}
		clients[nclients++] = (struct client){.fd = fd, .since_ms = mono_ms()};
	}
}

/* ---- maintenance: sshd only, no main process --------------------------------------------- */

static void maintenance_loop(int sfd)
{
	for (;;) {
		struct signalfd_siginfo si;
		if (read(sfd, &si, sizeof si) != sizeof si)
			continue;
		if (si.ssi_signo == SIGCHLD) {
			while (waitpid(-1, NULL, WNOHANG) > 0)
				;
		} else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
			power_off(0, 1); /* quietly: the container's exit code stays as it was */
		}
	}
}

/* ---- PID 1 ------------------------------------------------------------------------------- */

static int seed_flag(const char *seed, const char *name)
{
	char *v = slurp(seed, name, NULL);
	int yes = v && v[0] == '1';
	free(v);
	return yes;
}

/* A pooled VM waits here, booted, until a `run` claims it (PROTOCOL.md, "The warm pool").
 * The host sends "LEN\n" and LEN bytes: entries NAME\0 SIZE\0 DATA. A read while no host
 * is connected returns 0 (virtio_console): poll every 5 ms until one is. */
static int claim_main(const char *dir)
{
	int fd = open_port_as("hv.claim", O_RDONLY);
	if (fd < 0)
		return 1;
	status_line("pooled %llu", (unsigned long long)now_ns());
	char head[32];
	size_t hn = 0, want = 0, got = 0;
	char *buf = NULL;
	for (;;) {
		ssize_t n;
		if (!buf) {
			n = read(fd, head + hn, 1);
			if (n == 1 && head[hn] == '\n') {
				head[hn] = 0;
				want = strtoul(head, NULL, 10);
				if (want == 0 || want > (16u << 20) || !(buf = malloc(want)))
					return 1;
				continue;
			}
			if (n == 1 && hn < sizeof head - 2) {
				hn++;
				continue;
			}
		} else {
			n = read(fd, buf + got, want - got);
			if (n > 0 && (got += (size_t)n) == want)
				break;
			if (n > 0)
				continue;
		}
		if (n < 0 && errno != EINTR && errno != EAGAIN)
			return 1;
		if (n == 0) { /* no host connected (any more): a torn message starts over */
			free(buf);
			buf = NULL;
			hn = got = 0;
		}
		usleep(5000);
	}
	close(fd);
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return 1;
	for (size_t pos = 0; pos < want;) {
		const char *name = buf + pos;
		size_t nl = strnlen(name, want - pos);
		if (pos + nl + 1 >= want || !nl || strchr(name, '/'))
			return 1;
		pos += nl + 1;
		const char *sz = buf + pos;
		size_t sl = strnlen(sz, want - pos);
		if (pos + sl + 1 > want)
			return 1;
		size_t size = strtoul(sz, NULL, 10);
		pos += sl + 1;
		if (size > want - pos)
			return 1;
		char path[512];
		snprintf(path, sizeof path, "%s/%s", dir, name);
		int out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (out < 0 || write_all(out, buf + pos, size) < 0)
			return 1;
		close(out);
		pos += size;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if ((argc >= 2 && strcmp(argv[1], "--session") == 0) ||
	    (argc == 3 && strcmp(argv[1], "-c") == 0))
		return session_main();
	if (argc >= 2 && strcmp(argv[1], "--dns") == 0)
		return dns_main(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "--nics") == 0)
		return nics_main(argc, argv);
	if (getpid() == 1)
		reboot(RB_DISABLE_CAD); /* ctrl-alt-del becomes SIGINT to us: a stop request */
	signal(SIGPIPE, SIG_IGN);
	status_fd = open_port("hv.status");
	if (argc == 4 && strcmp(argv[1], "--fail") == 0)
		fail(atoi(argv[2]), argv[3]);
	if (argc == 3 && strcmp(argv[1], "--claim") == 0)
		return claim_main(argv[2]);
	const char *seed = argc > 1 ? argv[1] : SEED_DIR;
	root = argc > 2 ? argv[2] : ROOT_DIR;

	/* Signals arrive through a signalfd; the child gets the mask back before exec. */
	int fwd[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
	sigset_t mask, oldmask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	for (unsigned i = 0; i < sizeof fwd / sizeof *fwd; i++)
		sigaddset(&mask, fwd[i]);
	sigprocmask(SIG_BLOCK, &mask, &oldmask);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

	if (seed_flag(seed, "maintenance"))
		maintenance_loop(sfd);

	log_fd = open_port("hv.log");
	size_t alen = 0, elen = 0;
	char *abuf = slurp(seed, "argv", &alen), *ebuf = slurp(seed, "env", &elen);
	char *workdir = slurp(seed, "workdir", NULL), *user = slurp(seed, "user", NULL);
	if (!abuf || !alen)
		fail(125, "no command specified");
	tty_mode = seed_flag(seed, "tty");
	stdin_open = seed_flag(seed, "stdin_open");
	int wait_attach = seed_flag(seed, "wait_attach");
	/* /init started sshd when the seed had the keys: `started` waits until it listens. */
	int want_sshd = access(HOST_KEY_FILE, F_OK) == 0;
	uint64_t t0 = mono_ms();

	struct proc_spec ps = {0};
	ps.argv = split0(abuf, alen, 0);
	ps.env = split0(ebuf ? ebuf : "", ebuf ? elen : 0, 2);
	while (ps.env[ps.nenv])
		ps.nenv++;
	ps.workdir = workdir && *workdir ? workdir : "/";
	ps.user = user ? user : (char *)"";
	ps.root = root;

	int out[2] = {-1, -1}, errp[2] = {-1, -1}, in[2] = {-1, -1}, ep[2];
	int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	char slave[64] = "";
	if (sfd < 0 || devnull < 0 || pipe2(ep, O_CLOEXEC))
		fail(125, "cannot set up the main process's pipes");
	if (tty_mode) {
		master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (master < 0 || grantpt(master) || unlockpt(master) ||
		    ptsname_r(master, slave, sizeof slave))
			fail(125, "cannot allocate a terminal for the main process");
		ioctl(master, TIOCSWINSZ, &winsz);
		fcntl(master, F_SETFL, O_NONBLOCK);
		ps.tty = slave;
		if (stdin_open)
			stdin_w = master;
	} else {
		if (pipe2(out, O_CLOEXEC) || pipe2(errp, O_CLOEXEC) ||
		    (stdin_open && pipe2(in, O_CLOEXEC)))
			fail(125, "cannot set up the main process's pipes");
		out_r = out[0], err_r = errp[0];
		if (stdin_open) {
			stdin_w = in[1];
			fcntl(stdin_w, F_SETFL, O_NONBLOCK);
		}
	}
	attach_listen();

	pid_t main_pid = -1;
	int main_done = 0, code = 0, failed_code = 0, started_pending = 0;
	uint64_t started_ns = 0, wait_until = t0 + 120000, drain_until = 0;
	int waiting = wait_attach && listen_fd >= 0;
	int out_open = 1, err_open = !tty_mode;

	for (;;) {
		uint64_t now = mono_ms();
		/* Start the main process: now, or once the first attach client had its chance to
		 * send a resize (its first frame, or 200 ms), or after 120 s without one. */
		if (waiting && (now >= wait_until ||
				(nclients > 0 && (clients[0].frames > 0 ||
						  now >= clients[0].since_ms + 200))))
			waiting = 0;
		if (main_pid < 0 && !waiting && !main_done) {
			main_pid = fork();
			if (main_pid < 0)
				fail(125, "fork failed");
			if (main_pid == 0) {
				ps.err_fd = ep[1];
				sigprocmask(SIG_SETMASK, &oldmask, NULL);
				signal(SIGPIPE, SIG_DFL);
				setsid();
				if (!tty_mode) {
					dup2(stdin_open ? in[0] : devnull, 0);
					dup2(out[1], 1), dup2(errp[1], 2);
				}
				run_child(&ps);
			}
			close(ep[1]);
			if (!tty_mode) {
				close(out[1]), close(errp[1]);
				if (stdin_open)
					close(in[0]);
			}
			/* Did exec succeed? The CLOEXEC pipe closes empty on success. */
			char ebuf2[4096];
			ssize_t en = read(ep[0], ebuf2, sizeof ebuf2 - 1);
			close(ep[0]);
			if (en > 0) {
				ebuf2[en] = 0;
				char *msg = strchr(ebuf2, ' ');
				failed_code = atoi(ebuf2);
				say("%s", msg ? msg + 1 : ebuf2);
				status_line("error %d %s", failed_code, msg ? msg + 1 : ebuf2);
			} else {
				started_pending = 1;
				started_ns = now_ns();
				FILE *f = fopen(MAIN_PID_FILE, "we");
				if (f)
					fprintf(f, "%d\n", main_pid), fclose(f);
			}
		}
		if (started_pending &&
		    (!want_sshd || main_done || sshd_listening() || now >= t0 + 2000)) {
			status_line("started %llu", (unsigned long long)started_ns);
			started_pending = 0;
		}
		if (main_done && (!(out_open || err_open) || now >= drain_until))
			break;

		struct pollfd p[5 + MAX_CLIENTS];
		int np = 5;
		p[0] = (struct pollfd){sfd, POLLIN, 0};
		p[1] = (struct pollfd){listen_fd, POLLIN, 0};
		p[2] = (struct pollfd){out_open && main_pid > 0 ? (tty_mode ? master : out_r) : -1,
				       POLLIN, 0};
		p[3] = (struct pollfd){err_open && main_pid > 0 ? err_r : -1, POLLIN, 0};
		p[4] = (struct pollfd){stdin_len && main_pid > 0 ? stdin_w : -1, POLLOUT, 0};
		for (int i = 0; i < nclients; i++) {
			short ev = 0;
			if (!clients[i].rd_closed && stdin_len < STDIN_BUF_MAX)
				ev |= POLLIN;
			if (clients[i].outoff < clients[i].outlen)
				ev |= POLLOUT;
			p[np++] = (struct pollfd){clients[i].fd, ev, 0};
		}
		int timeout = -1;
		if (started_pending)
			timeout = 5;
		else if (waiting)
			timeout = nclients ? 10 : (int)(wait_until - now);
		else if (main_done)
			timeout = (int)(drain_until - now);
		if (poll(p, (nfds_t)np, timeout) < 0 && errno != EINTR)
			break;

		/* Output first, so what the process wrote before it died is never lost. */
		if (p[2].revents && !pump(p[2].fd, FR_STDOUT))
			out_open = 0;
		if (p[3].revents && !pump(p[3].fd, FR_STDERR))
			err_open = 0;
		if (p[4].revents)
			stdin_flush();
		/* Clients: newest index first, so drop_client's swap never skips one. */
		for (int i = np - 5 - 1; i >= 0; i--) {
			short re = p[5 + i].revents;
			if (!re || i >= nclients || clients[i].fd != p[5 + i].fd)
				continue;
			if ((re & POLLOUT) && flush_client(&clients[i])) {
				drop_client(i);
				continue;
			}
			if ((re & POLLIN) && client_read(i)) {
				drop_client(i);
				continue;
			}
			if ((re & (POLLHUP | POLLERR)) && !(re & POLLIN))
				drop_client(i);
		}
		if (p[1].revents)
			attach_accept();

		if (!(p[0].revents & POLLIN))
			continue;
		struct signalfd_siginfo si;
		if (read(sfd, &si, sizeof si) != sizeof si)
			continue;
		if (si.ssi_signo != SIGCHLD) {
			int sig = (int)si.ssi_signo;
			if (sig == SIGINT && si.ssi_code == SI_KERNEL)
				sig = SIGTERM; /* ctrl-alt-del from the host: stop */
			if (main_pid > 0 && !main_done)
				kill(main_pid, sig);
			else if (main_pid < 0 && sig == SIGTERM)
				power_off(128 + SIGTERM, 0); /* stopped before it started */
			continue;
		}
		int st;
		pid_t pid;
		while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
			if (pid != main_pid)
				continue;
			main_done = 1;
			unlink(MAIN_PID_FILE);
			code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
			/* Drain what is already readable, then end the container's leftover
			 * processes so that the output reaches EOF (daemons may hold it open). */
			for (;;) {
				struct pollfd q[2] = {
					{out_open ? (tty_mode ? master : out_r) : -1, POLLIN, 0},
					{err_open ? err_r : -1, POLLIN, 0}};
				if (poll(q, 2, 0) <= 0)
					break;
				if (q[0].revents && !pump(q[0].fd, FR_STDOUT))
					out_open = 0;
				if (q[1].revents && !pump(q[1].fd, FR_STDERR))
					err_open = 0;
			}
			kill_container_processes();
			drain_until = mono_ms() + 2000;
		}
	}
	if (failed_code)
		code = failed_code;

	/* The exit frame to every attach client, then wait (briefly) until each relay has
	 * passed everything on and gone, so that sshd can deliver it before we power off. */
	if (listen_fd >= 0)
		close(listen_fd), unlink(ATTACH_SOCK);
	char cs[16];
	snprintf(cs, sizeof cs, "%d", code);
	emit(FR_EXIT, cs, strlen(cs));
	int had_clients = nclients;
	for (uint64_t until = mono_ms() + 2000; nclients && mono_ms() < until;) {
		struct pollfd p[MAX_CLIENTS];
		for (int i = 0; i < nclients; i++) {
			struct client *c = &clients[i];
			if (c->outoff == c->outlen && !c->frames_shut) {
				shutdown(c->fd, SHUT_WR); /* all sent: the relay sees EOF */
				c->frames_shut = 1;
			}
			p[i] = (struct pollfd){c->fd, c->frames_shut ? POLLIN : POLLOUT, 0};
		}
		if (poll(p, (nfds_t)nclients, 50) <= 0)
			continue;
		for (int i = nclients - 1; i >= 0; i--) {
			char junk[4096];
			if (!p[i].revents)
				continue;
			if ((p[i].revents & POLLOUT) && flush_client(&clients[i]) == 0)
				continue;
			if ((p[i].revents & POLLIN) && read(clients[i].fd, junk, sizeof junk) > 0)
				continue;
			drop_client(i);
		}
	}
	if (had_clients)
		usleep(100000); /* sshd's turn to put the last bytes on the wire */
	power_off(code, 0);
}
