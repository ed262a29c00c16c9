/*
 * `hv-init --session`: sshd's ForceCommand, one per SSH channel, root in the agent's root.
 *
 * $SSH_ORIGINAL_COMMAND is `VERB ARG...`, words separated by single spaces, every ARG
 * standard base64 (so any bytes survive); an empty ARG is `-`. Lists are base64 of
 * NUL-terminated items. guest-images/agent/PROTOCOL.md documents the verbs:
 *
 *   exec ARGV ENV WORKDIR USER   run a process in the container (stdio = the channel)
 *   signal SIGNUM                signal the main process
 *   attach                       relay the channel <-> PID 1's attach socket
 *   top [ARGS]                   the container's processes, `ps -ef` style
 *   stat [-L] PATH               one line about PATH inside the container root
 *   tar-out FOLLOW PATH          tar of PATH on stdout
 *   tar-in DIR                   extract the tar on stdin into DIR
 *   hosts                        stdin becomes the container's /etc/hosts
 *   nics                         stdin: the container's hv NICs now (netns.c configures them)
 *   resume TIME ENTROPY          after a checkpoint's restore: the clock set, entropy credited
 *   ready                        prints "ok"
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <linux/random.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define MAX_WORDS 16

static void __attribute__((noreturn, format(printf, 2, 3))) die(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

/* ---- arguments ------------------------------------------------------------------------- */

struct arg {
	char *b; /* decoded, NUL-terminated (an extra NUL beyond len) */
	size_t len;
};

static int b64val(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Standard base64 (padding optional); "-" is empty. 0, or -1 when malformed. */
static int b64decode(const char *s, struct arg *out)
{
	size_t n = strlen(s);
	out->b = malloc(n + 2);
	out->len = 0;
	if (strcmp(s, "-") == 0) {
		out->b[0] = 0;
		return 0;
	}
	while (n && s[n - 1] == '=')
		n--;
	uint32_t acc = 0;
	int bits = 0;
	for (size_t i = 0; i < n; i++) {
		int v = b64val((unsigned char)s[i]);
		if (v < 0)
			return -1;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out->b[out->len++] = (char)(acc >> bits & 0xff);
		}
	}
	if (bits >= 6)
		return -1;
	out->b[out->len] = 0;
	out->b[out->len + 1] = 0;
	return 0;
}

/* The items of a NUL-terminated list as a NULL-terminated vector with EXTRA free slots. */
static char **arg_list(struct arg *a, int extra)
{
	return split0(a->b, a->len, extra);
}

static int nitems(char **v)
{
	int n = 0;
	while (v[n])
		n++;
	return n;
}

/* ---- entering the container's files ---------------------------------------------------- */

/* chroot into the container root, in a private mount namespace without the container's
 * /proc (its /proc/1/root would lead back to the agent's root). */
static void enter_container_fs(void)
{
	if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		die(1, "cannot make a private mount namespace: %s", strerror(errno));
	if (umount2(ROOT_DIR "/proc", MNT_DETACH) && errno != EINVAL && errno != ENOENT)
		die(1, "cannot hide the container's /proc: %s", strerror(errno));
	if (chroot(ROOT_DIR) || chdir("/"))
		die(1, "cannot enter the container root: %s", strerror(errno));
}

static int open_busybox(void)
{
	int fd = open(BUSYBOX, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die(1, "cannot open %s: %s", BUSYBOX, strerror(errno));
	return fd;
}

static char *const bb_env[] = {"PATH=/bin:/usr/bin:/sbin:/usr/sbin", "LC_ALL=C", NULL};

/* ---- exec ------------------------------------------------------------------------------- */

static pid_t child_pid;

static void forward(int sig)
{
	if (child_pid > 0)
		kill(child_pid, sig);
}

static int wait_code(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return 125;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int verb_exec(struct arg *a, int n)
{
	if (n != 4)
		die(125, "usage: exec ARGV ENV WORKDIR USER");
	char **argv = arg_list(&a[0], 0);
	if (!argv[0])
		die(125, "no command specified");
	size_t elen = 0;
	char *ebuf = slurp(SEED_DIR, "env", &elen);
	char **senv = split0(ebuf ? ebuf : "", ebuf ? elen : 0, 0);
	char **xenv = arg_list(&a[1], 0);
	int ns = nitems(senv), nx = nitems(xenv), ne = 0;
	char **env = calloc((size_t)(ns + nx + 4), sizeof *env);
	for (int i = 0; i < ns + nx; i++) {
		char *item = i < ns ? senv[i] : xenv[i - ns];
		size_t kl = strcspn(item, "=");
		int k;
		for (k = 0; k < ne; k++) /* later wins by key */
			if (strncmp(env[k], item, kl) == 0 && (env[k][kl] == '=' || !env[k][kl]))
				break;
		env[k] = item;
		if (k == ne)
			ne++;
	}
	env[ne] = NULL;
	if (isatty(0) && !getenv_in(env, "TERM"))
		env[ne++] = "TERM=xterm";
	env[ne] = NULL;

	char *workdir = a[2].len ? a[2].b : slurp(SEED_DIR, "workdir", NULL);
	char *user = a[3].len ? a[3].b : slurp(SEED_DIR, "user", NULL);
	struct proc_spec ps = {
		.argv = argv,
		.env = env,
		.nenv = ne,
		.workdir = workdir && *workdir ? workdir : "/",
		.user = user ? user : (char *)"",
		.root = ROOT_DIR,
		.exec_mode = 1,
	};
	int ep[2];
	if (pipe2(ep, O_CLOEXEC))
		die(126, "cannot create a pipe: %s", strerror(errno));
	child_pid = fork();
	if (child_pid < 0)
		die(126, "fork failed: %s", strerror(errno));
	if (child_pid == 0) {
		signal(SIGPIPE, SIG_DFL);
		ps.err_fd = ep[1];
		run_child(&ps);
	}
	close(ep[1]);
	/* The terminal's ^C and ^\ are for the process; hang-ups and stops are passed on. */
	signal(SIGINT, SIG_IGN);
	signal(SIGQUIT, SIG_IGN);
	struct sigaction sa = {.sa_handler = forward};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	char msg[4096];
	ssize_t en;
	while ((en = read(ep[0], msg, sizeof msg - 1)) < 0 && errno == EINTR)
		;
	close(ep[0]);
	if (en > 0) {
		msg[en] = 0;
		char *text = strchr(msg, ' ');
		fprintf(stderr, "%s\n", text ? text + 1 : msg);
		fflush(stderr);
		wait_code(child_pid);
		return atoi(msg);
	}
	/* Only the process holds the channel's stdio now: sshd sees EOF when it is done. */
	int nul = open("/dev/null", O_RDWR);
	if (nul >= 0)
		dup2(nul, 0), dup2(nul, 1), dup2(nul, 2);
	return wait_code(child_pid);
}

/* ---- signal, attach ------------------------------------------------------------------- */

static pid_t main_pid(void)
{
	char *s = slurp(RUN_DIR, "main.pid", NULL);
	pid_t pid = s ? atoi(s) : 0;
	free(s);
	return pid;
}

static int verb_signal(struct arg *a, int n)
{
	if (n != 1 || !all_digits(a[0].b))
		die(125, "usage: signal SIGNUM");
	int sig = atoi(a[0].b);
	pid_t pid = main_pid();
	if (pid <= 0)
		die(1, "the container has no main process running");
	if (kill(pid, sig))
		die(1, "cannot send signal %d to the main process: %s", sig, strerror(errno));
	return 0;
}

static int verb_attach(int n)
{
	if (n != 0)
		die(125, "usage: attach");
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	snprintf(addr.sun_path, sizeof addr.sun_path, "%s", ATTACH_SOCK);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr))
		die(1, "the container has no main process running");
	signal(SIGPIPE, SIG_IGN);
	static char buf[65536];
	int in_open = 1;
	for (;;) {
		struct pollfd p[3] = {{in_open ? 0 : -1, POLLIN, 0}, {s, POLLIN, 0}, {1, 0, 0}};
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		if (p[1].revents) {
			ssize_t r = read(s, buf, sizeof buf);
			if (r <= 0)
				return 0; /* PID 1 is done (after the exit frame) */
			if (write_all(1, buf, (size_t)r))
				return 0;
		}
		if (p[0].revents) {
			ssize_t r = read(0, buf, sizeof buf);
			if (r <= 0) {
				in_open = 0;
				shutdown(s, SHUT_WR);
			} else if (write_all(s, buf, (size_t)r)) {
				return 1;
			}
		}
		if (p[2].revents & (POLLERR | POLLHUP))
			return 0; /* the channel is gone: detach */
	}
}

/* ---- top -------------------------------------------------------------------------------- */

struct pinfo {
	int pid, ppid, c;
	unsigned uid;
	char tty[16], stime[16], time[32];
	char *cmd;
};

static char *read_small(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 4096, n = 0;
	char *b = malloc(cap + 1);
	ssize_t r;
	while ((r = read(fd, b + n, cap - n)) > 0) {
		n += (size_t)r;
		if (n == cap)
			b = realloc(b, (cap *= 2) + 1);
	}
	close(fd);
	b[n] = 0;
	if (len)
		*len = n;
	return b;
}

static int in_container(const char *pid)
{
	char path[300], link[PATH_MAX];
	snprintf(path, sizeof path, "/proc/%s/root", pid);
	ssize_t n = readlink(path, link, sizeof link - 1);
	if (n <= 0)
		return 0;
	link[n] = 0;
	size_t rl = strlen(ROOT_DIR);
	return strncmp(link, ROOT_DIR, rl) == 0 && (link[rl] == 0 || link[rl] == '/');
}

static int collect(struct pinfo **out)
{
	long hz = sysconf(_SC_CLK_TCK);
	double uptime = 0;
	unsigned long long btime = 0;
	char *u = read_small("/proc/uptime", NULL), *st = read_small("/proc/stat", NULL);
	if (u)
		uptime = atof(u);
	char *bt = st ? strstr(st, "\nbtime ") : NULL;
	if (bt)
		btime = strtoull(bt + 7, NULL, 10);
	time_t now = time(NULL);
	struct tm today;
	gmtime_r(&now, &today);

	int n = 0, cap = 64;
	struct pinfo *v = malloc(sizeof *v * (size_t)cap);
	DIR *d = opendir("/proc");
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (!all_digits(e->d_name) || !in_container(e->d_name))
			continue;
		char path[300];
		snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
		char *s = read_small(path, NULL);
		char *rp = s ? strrchr(s, ')') : NULL;
		if (!rp) {
			free(s);
			continue;
		}
		struct pinfo p = {.pid = atoi(e->d_name)};
		char state;
		int ttynr = 0;
		unsigned long long ut = 0, stt = 0, start = 0;
		if (sscanf(rp + 2,
			   "%c %d %*d %*d %d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d "
			   "%*d %llu",
			   &state, &p.ppid, &ttynr, &ut, &stt, &start) != 6) {
			free(s);
			continue;
		}
		char comm[64];
		snprintf(comm, sizeof comm, "[%.*s]", (int)(rp - strchr(s, '(') - 1),
			 strchr(s, '(') + 1);
		free(s);
		snprintf(path, sizeof path, "/proc/%s/status", e->d_name);
		s = read_small(path, NULL);
		char *uidl = s ? strstr(s, "\nUid:") : NULL;
		if (uidl)
			sscanf(uidl + 5, "%*u %u", &p.uid);
		free(s);
		size_t cl = 0;
		snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
		p.cmd = read_small(path, &cl);
		if (!p.cmd || cl == 0) {
			free(p.cmd);
			p.cmd = strdup(comm);
		} else {
			while (cl > 0 && p.cmd[cl - 1] == 0)
				cl--;
			for (size_t i = 0; i < cl; i++) /* as procps shows them */
				if (p.cmd[i] == 0)
					p.cmd[i] = ' ';
				else if ((unsigned char)p.cmd[i] < 0x20 || p.cmd[i] == 0x7f)
					p.cmd[i] = '?';
		}
		int major = (ttynr >> 8) & 0xfff, minor = (ttynr & 0xff) | ((ttynr >> 12) & 0xfff00);
		if (ttynr == 0)
			snprintf(p.tty, sizeof p.tty, "?");
		else if (major >= 136 && major <= 143)
			snprintf(p.tty, sizeof p.tty, "pts/%d", minor + (major - 136) * 256);
		else if (major == 4 && minor >= 64)
			snprintf(p.tty, sizeof p.tty, "ttyS%d", minor - 64);
		else if (major == 4)
			snprintf(p.tty, sizeof p.tty, "tty%d", minor);
		else if (major == 5 && minor == 1)
			snprintf(p.tty, sizeof p.tty, "console");
		else
			snprintf(p.tty, sizeof p.tty, "%d,%d", major, minor);
		unsigned long long cpu = (ut + stt) / (unsigned long long)hz;
		if (cpu >= 86400)
			snprintf(p.time, sizeof p.time, "%llu-%02llu:%02llu:%02llu", cpu / 86400,
				 cpu / 3600 % 24, cpu / 60 % 60, cpu % 60);
		else
			snprintf(p.time, sizeof p.time, "%02llu:%02llu:%02llu", cpu / 3600,
				 cpu / 60 % 60, cpu % 60);
		double secs = uptime - (double)start / (double)hz;
		unsigned long long pcpu = secs > 0 ? (unsigned long long)((double)(ut + stt) * 1000.0 /
									 (double)hz / secs)
						   : 0;
		p.c = (int)(pcpu / 10 > 99 ? 99 : pcpu / 10);
		time_t t0 = (time_t)(btime + start / (unsigned long long)hz);
		struct tm tm;
		gmtime_r(&t0, &tm);
		if (tm.tm_year == today.tm_year && tm.tm_yday == today.tm_yday)
			strftime(p.stime, sizeof p.stime, "%H:%M", &tm);
		else
			strftime(p.stime, sizeof p.stime, "%b%d", &tm);
		if (n == cap)
			v = realloc(v, sizeof *v * (size_t)(cap *= 2));
		v[n++] = p;
	}
	if (d)
		closedir(d);
	*out = v;
	return n;
}

static int by_pid(const void *a, const void *b)
{
	return ((const struct pinfo *)a)->pid - ((const struct pinfo *)b)->pid;
}

/* Docker's `docker top` runs `ps -ef` (or the given ps options) and keeps the container's
 * processes: here the processes whose root is the container root. */
static int verb_top(struct arg *a, int n)
{
	if (n > 1)
		die(125, "usage: top [ARGS]");
	char **args = n ? arg_list(&a[0], 0) : calloc(1, sizeof(char *));
	int nargs = nitems(args);
	int bb = open_busybox();
	struct pinfo *v;
	int np = collect(&v);
	qsort(v, (size_t)np, sizeof *v, by_pid);

	if (nargs == 0 || (nargs == 1 && strcmp(args[0], "-ef") == 0)) {
		/* User names as the container knows them. */
		enter_container_fs();
		printf("%-8s %7s %7s %2s %5s %-8s %8s %s\n", "UID", "PID", "PPID", "C", "STIME",
		       "TTY", "TIME", "CMD");
		for (int i = 0; i < np; i++) {
			char name[64];
			snprintf(name, sizeof name, "%u", v[i].uid);
			struct passwd *pw;
			FILE *f = fopen("/etc/passwd", "re");
			while (f && (pw = fgetpwent(f)))
				if (pw->pw_uid == v[i].uid) {
					snprintf(name, sizeof name, "%s", pw->pw_name);
					break;
				}
			if (f)
				fclose(f);
			printf("%-8s %7d %7d %2d %5s %-8s %8s %s\n", name, v[i].pid, v[i].ppid,
			       v[i].c, v[i].stime, v[i].tty, v[i].time, v[i].cmd);
		}
		return fflush(stdout) ? 1 : 0;
	}

	/* ps with the given options (busybox's: -o COLS, -T), filtered on its PID column. */
	int pp[2];
	if (pipe(pp))
		die(1, "cannot create a pipe");
	pid_t pid = fork();
	if (pid == 0) {
		dup2(pp[1], 1);
		close(pp[0]), close(pp[1]);
		char **av = calloc((size_t)nargs + 2, sizeof *av);
		av[0] = "ps";
		memcpy(av + 1, args, sizeof *av * (size_t)nargs);
		fexecve(bb, av, bb_env);
		_exit(127);
	}
	close(pp[1]);
	size_t len = 0, cap = 65536;
	char *out = malloc(cap + 1);
	ssize_t r;
	while ((r = read(pp[0], out + len, cap - len)) > 0)
		if ((len += (size_t)r) == cap)
			out = realloc(out, (cap *= 2) + 1);
	out[len] = 0;
	int code = wait_code(pid);
	if (code)
		return code;
	char *save = NULL, *line = strtok_r(out, "\n", &save);
	if (!line)
		die(1, "ps printed nothing");
	int col = -1, k = 0;
	char hdr[4096];
	snprintf(hdr, sizeof hdr, "%s", line);
	for (char *s2 = NULL, *w = strtok_r(hdr, " \t", &s2); w; w = strtok_r(NULL, " \t", &s2), k++)
		if (strcmp(w, "PID") == 0)
			col = k;
	if (col < 0)
		die(1, "Couldn't find PID field in ps output");
	printf("%s\n", line);
	while ((line = strtok_r(NULL, "\n", &save))) {
		char copy[4096], *s2 = NULL, *w;
		snprintf(copy, sizeof copy, "%s", line);
		w = strtok_r(copy, " \t", &s2);
		for (int i = 0; w && i < col; i++)
			w = strtok_r(NULL, " \t", &s2);
		if (!w)
			continue;
		int p = atoi(w);
		for (int i = 0; i < np; i++)
			if (v[i].pid == p) {
				printf("%s\n", line);
				break;
			}
	}
	return fflush(stdout) ? 1 : 0;
}

/* ---- stat, tar-out, tar-in --------------------------------------------------------------- */

static void b64print(const unsigned char *p, size_t n)
{
	static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	if (n == 0) {
		putchar('-');
		return;
	}
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
			     (i + 2 < n ? p[i + 2] : 0);
		putchar(al[v >> 18 & 63]);
		putchar(al[v >> 12 & 63]);
		putchar(i + 1 < n ? al[v >> 6 & 63] : '=');
		putchar(i + 2 < n ? al[v & 63] : '=');
	}
}

static int is_flag(struct arg *a, const char *word, const char *flag)
{
	return strcmp(word, flag) == 0 || strcmp(a->b, flag) == 0;
}

static int verb_stat(struct arg *a, char **words, int n)
{
	int follow = 0;
	if (n == 2 && is_flag(&a[0], words[0], "-L"))
		follow = 1, a++, n--;
	if (n != 1 || !a[0].len)
		die(125, "usage: stat [-L] PATH");
	enter_container_fs();
	struct stat st;
	if ((follow ? stat : lstat)(a[0].b, &st)) {
		if (errno == ENOENT || errno == ENOTDIR)
			die(2, "No such file or directory");
		die(1, "%s", strerror(errno));
	}
	char type = S_ISREG(st.st_mode)	   ? 'f'
		    : S_ISDIR(st.st_mode)  ? 'd'
		    : S_ISLNK(st.st_mode)  ? 'l'
		    : S_ISCHR(st.st_mode)  ? 'c'
		    : S_ISBLK(st.st_mode)  ? 'b'
		    : S_ISFIFO(st.st_mode) ? 'p'
					   : 's';
	printf("%c %04o %u %u %lld %lld.%09ld ", type, st.st_mode & 07777, st.st_uid, st.st_gid,
	       (long long)st.st_size, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	char target[PATH_MAX];
	ssize_t tl = S_ISLNK(st.st_mode) ? readlink(a[0].b, target, sizeof target) : 0;
	b64print((unsigned char *)target, tl > 0 ? (size_t)tl : 0);
	putchar('\n');
	return fflush(stdout) ? 1 : 0;
}

static int verb_tar_out(struct arg *a, char **words, int n)
{
	if (n != 2 || !a[1].len)
		die(125, "usage: tar-out FOLLOW PATH");
	int follow = is_flag(&a[0], words[0], "1");
	int bb = open_busybox();
	enter_container_fs();
	char *path = a[1].b, real[PATH_MAX];
	if (follow) { /* the path itself, like `docker cp -L`; links below it stay links */
		if (!realpath(path, real))
			die(1, "tar: %s: %s", path, strerror(errno));
		path = real;
	}
	/* parent directory as cwd, the last name as the member */
	size_t l = strlen(path);
	while (l > 1 && path[l - 1] == '/')
		path[--l] = 0;
	char *slash = strrchr(path, '/'), *dir, *base;
	if (strcmp(path, "/") == 0)
		dir = "/", base = ".";
	else if (!slash)
		dir = ".", base = path;
	else if (slash == path)
		dir = "/", base = path + 1;
	else
		*slash = 0, dir = path, base = slash + 1;
	char member[PATH_MAX + 3];
	snprintf(member, sizeof member, "%s%s", base[0] == '-' ? "./" : "", base);
	char *av[] = {"tar", "-c", "-f", "-", "-C", dir, member, NULL};
	fexecve(bb, av, bb_env);
	die(1, "cannot run tar: %s", strerror(errno));
}

static int verb_tar_in(struct arg *a, int n)
{
	if (n != 1 || !a[0].len)
		die(125, "usage: tar-in DIR");
	int bb = open_busybox();
	enter_container_fs();
	struct stat st;
	if (stat(a[0].b, &st))
		die(2, "%s: %s", a[0].b, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		die(2, "%s: %s", a[0].b, strerror(ENOTDIR));
	if (chdir(a[0].b))
		die(2, "%s: %s", a[0].b, strerror(errno));
	pid_t pid = fork();
	if (pid == 0) {
		umask(0);
		char *av[] = {"tar", "-x", "-f", "-", "--numeric-owner", NULL};
		fexecve(bb, av, bb_env);
		_exit(127);
	}
	int code = wait_code(pid);
	sync(); /* the host may power the VM off (destroy) right after */
	return code;
}

/* The container's /etc/hosts is a bind mount of /run/hv/hosts: rewritten in place (a rename
 * would leave the bind on the old inode), new bytes first, then cut to length, so a reader
 * never finds it empty. */
static int verb_hosts(int n)
{
	static char buf[1 << 20];
	size_t len = 0;
	ssize_t r;
	if (n != 0)
		die(125, "usage: hosts (the new /etc/hosts on stdin)");
	while ((r = read(0, buf + len, sizeof buf - len)) > 0)
		if ((len += (size_t)r) == sizeof buf)
			die(1, "hosts: more than %zu bytes", sizeof buf - 1);
	if (r < 0)
		die(1, "hosts: %s", strerror(errno));
	int fd = open("/run/hv/hosts", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		die(1, "/run/hv/hosts: %s", strerror(errno));
	for (size_t off = 0; off < len; off += (size_t)r)
		if ((r = pwrite(fd, buf + off, len - off, (off_t)off)) <= 0)
			die(1, "/run/hv/hosts: %s", strerror(errno));
	if (ftruncate(fd, (off_t)len) || close(fd))
		die(1, "/run/hv/hosts: %s", strerror(errno));
	return 0;
}

/* A restored checkpoint runs on from the moment it was saved: its wall clock is behind by
 * the time it lay on disk, and its RNG would replay the state of every other restore of the
 * same checkpoint. TIME is the host's "SECONDS.NANOSECONDS"; ENTROPY fresh random bytes from
 * the host, credited to the kernel's pool (RNDADDENTROPY), which reseeds it. */
static int verb_resume(struct arg *a, int n)
{
	if (n != 2 || a[1].len == 0 || a[1].len > 512)
		die(125, "usage: resume SECONDS.NANOSECONDS ENTROPY");
	char *dot = NULL;
	struct timespec ts = {.tv_sec = strtoll(a[0].b, &dot, 10)};
	if (dot && *dot == '.') {
		char frac[10] = "000000000";
		size_t l = strlen(dot + 1);
		memcpy(frac, dot + 1, l > 9 ? 9 : l);
		ts.tv_nsec = strtol(frac, NULL, 10);
	}
	if (ts.tv_sec <= 0 || clock_settime(CLOCK_REALTIME, &ts) != 0)
		die(1, "resume: cannot set the clock: %s", strerror(errno));
	struct {
		int entropy_count;
		int buf_size;
		unsigned char buf[512];
	} e = {.entropy_count = (int)a[1].len * 8, .buf_size = (int)a[1].len};
	memcpy(e.buf, a[1].b, a[1].len);
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, RNDADDENTROPY, &e) != 0)
		die(1, "resume: cannot add entropy: %s", strerror(errno));
	close(fd);
	return 0;
}

/* ---- dispatch ---------------------------------------------------------------------------- */

int session_main(void)
{
	const char *cmd = getenv("SSH_ORIGINAL_COMMAND");
	if (!cmd || !*cmd)
		die(125, "hv-init --session: no command (expected VERB ARG...)");
	char *copy = strdup(cmd), *save = NULL;
	char *words[MAX_WORDS + 1];
	int nw = 0;
	for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
		if (nw == MAX_WORDS)
			die(125, "too many arguments");
		words[nw++] = w;
	}
	if (nw == 0)
		die(125, "hv-init --session: no command");
	const char *verb = words[0];
	int n = nw - 1;
	struct arg a[MAX_WORDS];
	for (int i = 0; i < n; i++)
		if (b64decode(words[i + 1], &a[i])) {
			/* literal flags are allowed where documented ("-L", "0", "1") */
			a[i].b = words[i + 1];
			a[i].len = strlen(a[i].b);
		}
	if (strcmp(verb, "ready") == 0) {
		puts("ok");
		return fflush(stdout) ? 1 : 0;
	}
	if (strcmp(verb, "exec") == 0)
		return verb_exec(a, n);
	if (strcmp(verb, "signal") == 0)
		return verb_signal(a, n);
	if (strcmp(verb, "attach") == 0)
		return verb_attach(n);
	if (strcmp(verb, "top") == 0)
		return verb_top(a, n);
	if (strcmp(verb, "stat") == 0)
		return verb_stat(a, words + 1, n);
	if (strcmp(verb, "tar-out") == 0)
		return verb_tar_out(a, words + 1, n);
	if (strcmp(verb, "tar-in") == 0)
		return verb_tar_in(a, n);
	if (strcmp(verb, "hosts") == 0)
		return verb_hosts(n);
	if (strcmp(verb, "resume") == 0)
		return verb_resume(a, n);
	if (strcmp(verb, "nics") == 0) {
		if (n != 0)
			die(125, "usage: nics (the NIC list on stdin)");
		return nics_main(2, (char *[]){"hv-init", "--nics", NULL});
	}
	die(125, "unknown verb: %s", verb);
}
