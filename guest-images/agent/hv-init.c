/*
 * hv-init: PID 1 of an hv container VM, after /init has mounted everything.
 *
 *   hv-init [SEED_DIR [ROOT]]     run the container's main process (default /seed /c)
 *   hv-init --fail CODE MESSAGE   report an early failure, then power off
 *
 * The main process runs chrooted into ROOT with the argv/env/workdir/user read from
 * SEED_DIR (argv and env: NUL-terminated items; the rest: one plain value per file).
 * Its stdout/stderr are pumped into framed records on the virtio-serial port "hv.log";
 * "started", "error" and "exited" lines go to the port "hv.status" (see DESIGN.md).
 * PID 1 forwards signals, reaps every zombie, and never exits: it powers the VM off.
 *
 * Built with: gcc -static -Os -o hv-init hv-init.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define FRAME_MAX (32768 - 16) /* one frame per write: virtio_console takes <= 32 KiB */

static int status_fd = -1, log_fd = -1;

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("hv-agent: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		p += n;
		len -= (size_t)n;
	}
}

/* Open the virtio-serial port called NAME (/sys/class/virtio-ports/vportXpY/name). The ports
 * are announced by the host asynchronously after the driver loads, so wait up to ~5 s. */
static int open_port(const char *name)
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
				fd = open(path, O_WRONLY | O_CLOEXEC);
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

/* Last words: "exited CODE NS", sync, power off. Never returns. */
static void power_off(int code)
{
	sync();
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
	power_off(code);
}

/* Read a whole seed file (NUL-terminated in memory); NULL if missing. */
static char *slurp(const char *dir, const char *name, size_t *len)
{
	char path[512];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return NULL;
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap + 1);
	ssize_t r;
	while (buf && (r = read(fd, buf + n, cap - n)) > 0) {
		n += (size_t)r;
		if (n == cap)
			buf = realloc(buf, (cap *= 2) + 1);
	}
	close(fd);
	if (!buf)
		fail(125, "out of memory");
	buf[n] = 0;
	if (len)
		*len = n;
	return buf;
}

/* Split NUL-terminated items into a NULL-terminated vector with room for EXTRA more. */
static char **split0(char *buf, size_t len, int extra)
{
	int count = 0;
	for (size_t i = 0; i < len; i++)
		count += buf[i] == 0;
	if (len && buf[len - 1])
		count++; /* tolerate a missing final NUL */
	char **v = calloc((size_t)(count + extra + 1), sizeof *v);
	int k = 0;
	for (size_t i = 0; i < len; i += strlen(buf + i) + 1)
		v[k++] = buf + i;
	return v;
}

static const char *getenv_in(char **env, const char *key)
{
	size_t kl = strlen(key);
	for (; *env; env++)
		if (strncmp(*env, key, kl) == 0 && (*env)[kl] == '=')
			return *env + kl + 1;
	return NULL;
}

/* ---- the child: becomes the container's main process -------------------------------- */

static int err_fd; /* CLOEXEC pipe back to PID 1: "CODE MESSAGE", only on failure */

static void child_fail(int code, const char *fmt, ...)
{
	char buf[4096];
	int n = snprintf(buf, sizeof buf, "%d ", code);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
	va_end(ap);
	write_all(err_fd, buf, strlen(buf));
	_exit(code);
}

static int all_digits(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return 0;
	return 1;
}

/* Docker's rules (runc's GetExecUser): user by name or uid, optional :group or :gid; a
 * numeric uid absent from passwd runs with gid 0; supplementary groups from /etc/group
 * only when no group was given. Returns HOME (from passwd, else "/"). */
static const char *switch_user(char *spec)
{
	char *grp = strchr(spec, ':');
	if (grp)
		*grp++ = 0;
	const char *name = *spec ? spec : "0";
	uid_t uid = 0;
	gid_t gid = 0;
	const char *home = "/", *pwname = NULL;
	FILE *f = fopen("/etc/passwd", "r");
	struct passwd *pw = NULL;
	while (f && (pw = fgetpwent(f)))
		if (strcmp(pw->pw_name, name) == 0 ||
		    (all_digits(name) && pw->pw_uid == strtoul(name, NULL, 10)))
			break;
	if (pw) {
		uid = pw->pw_uid, gid = pw->pw_gid;
		home = strdup(pw->pw_dir), pwname = strdup(pw->pw_name);
	} else if (all_digits(name)) {
		uid = (uid_t)strtoul(name, NULL, 10);
	} else {
		child_fail(125, "unable to find user %s: no matching entries in passwd file", name);
	}
	if (f)
		fclose(f);

	gid_t groups[NGROUPS_MAX];
	int ngroups = 0, found = 0;
	f = fopen("/etc/group", "r");
	struct group *gr;
	while (f && (gr = fgetgrent(f))) {
		if (grp && *grp) {
			if (!found && (strcmp(gr->gr_name, grp) == 0 ||
				       (all_digits(grp) && gr->gr_gid == strtoul(grp, NULL, 10))))
				gid = gr->gr_gid, found = 1;
		} else if (pwname) {
			for (char **m = gr->gr_mem; *m && ngroups < NGROUPS_MAX; m++)
				if (strcmp(*m, pwname) == 0)
					groups[ngroups++] = gr->gr_gid;
		}
	}
	if (f)
		fclose(f);
	if (grp && *grp && !found) {
		if (!all_digits(grp))
			child_fail(125, "unable to find group %s: no matching entries in group file",
				   grp);
		gid = (gid_t)strtoul(grp, NULL, 10);
	}
	if (setgroups((size_t)ngroups, groups) || setgid(gid) || setuid(uid))
		child_fail(125, "cannot switch to user %s: %s", spec, strerror(errno));
	return home;
}

static void mkdir_p(const char *dir)
{
	char buf[4096];
	snprintf(buf, sizeof buf, "%s/", dir);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0755) && errno != EEXIST)
			child_fail(125, "cannot create workdir %s: %s", dir, strerror(errno));
		*p = '/';
	}
}

static void exec_error(const char *arg0, const char *shown, int err)
{
	if (err == ENOENT || err == ENOTDIR)
		child_fail(127, "exec: \"%s\": stat %s: no such file or directory", arg0, shown);
	if (err == EACCES || err == EPERM || err == ENOEXEC || err == EISDIR)
		child_fail(126, "exec: \"%s\": %s", arg0,
			   err == ENOEXEC ? "exec format error" : "permission denied");
	child_fail(125, "exec: \"%s\": %s", arg0, strerror(err));
}

static void run_child(char **argv, char **env, int nenv, const char *workdir, char *user,
		      const char *root)
{
	if (chroot(root) || chdir("/"))
		child_fail(125, "cannot enter the container root %s: %s", root, strerror(errno));
	mkdir_p(workdir);
	const char *home = switch_user(user);
	if (chdir(workdir))
		child_fail(125, "cannot chdir to %s: %s", workdir, strerror(errno));
	if (!getenv_in(env, "PATH"))
		env[nenv++] = "PATH=" DEFAULT_PATH;
	if (!getenv_in(env, "HOME")) {
		char *h = malloc(strlen(home) + 6);
		sprintf(h, "HOME=%s", home);
		env[nenv++] = h;
	}
	env[nenv] = NULL;

	if (strchr(argv[0], '/')) {
		execve(argv[0], argv, env);
		exec_error(argv[0], argv[0], errno);
	}
	/* Search the container's PATH, never a shell (like Go's exec.LookPath). */
	const char *path = getenv_in(env, "PATH");
	char *dirs = strdup(path), *save = NULL, full[4096];
	int denied = 0;
	for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		snprintf(full, sizeof full, "%s/%s", *d ? d : ".", argv[0]);
		execve(full, argv, env);
		if (errno == EACCES)
			denied = 1;
		else if (errno != ENOENT && errno != ENOTDIR)
			exec_error(argv[0], full, errno);
	}
	if (denied)
		exec_error(argv[0], argv[0], EACCES);
	child_fail(127, "exec: \"%s\": executable file not found in $PATH", argv[0]);
}

/* ---- PID 1: pump output, forward signals, reap, power off ---------------------------- */

static void pump(int fd, int stream, int *open_flag)
{
	static char buf[16 + FRAME_MAX];
	ssize_t n = read(fd, buf + 16, FRAME_MAX);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		*open_flag = 0;
		return;
	}
	uint64_t ts = now_ns();
	memset(buf, 0, 16);
	buf[0] = (char)stream;
	for (int i = 0; i < 4; i++)
		buf[4 + i] = (char)((uint32_t)n >> (24 - 8 * i));
	for (int i = 0; i < 8; i++)
		buf[8 + i] = (char)(ts >> (56 - 8 * i));
	if (log_fd >= 0)
		write_all(log_fd, buf, 16 + (size_t)n);
}

/* Unmount everything under ROOT, deepest first; remount ROOT read-only if it stays busy. */
static void unmount_root(const char *root)
{
	char *mnts[64];
	int n = 0;
	FILE *f = fopen("/proc/self/mounts", "r");
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

int main(int argc, char **argv)
{
	if (getpid() == 1)
		reboot(RB_DISABLE_CAD); /* ctrl-alt-del becomes SIGINT to us: a stop request */
	status_fd = open_port("hv.status");
	if (argc == 4 && strcmp(argv[1], "--fail") == 0)
		fail(atoi(argv[2]), argv[3]);
	const char *seed = argc > 1 ? argv[1] : "/seed", *root = argc > 2 ? argv[2] : "/c";
	log_fd = open_port("hv.log");

	size_t alen = 0, elen = 0;
	char *abuf = slurp(seed, "argv", &alen), *ebuf = slurp(seed, "env", &elen);
	char *workdir = slurp(seed, "workdir", NULL), *user = slurp(seed, "user", NULL);
	if (!abuf || !alen)
		fail(125, "no command specified");
	char **cargv = split0(abuf, alen, 0);
	char **cenv = split0(ebuf ? ebuf : "", ebuf ? elen : 0, 2);
	int nenv = 0;
	while (cenv[nenv])
		nenv++;
	if (!workdir || !*workdir)
		workdir = "/";

	/* Signals arrive through a signalfd; the child gets the mask back before exec. */
	int fwd[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
	sigset_t mask, oldmask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	for (unsigned i = 0; i < sizeof fwd / sizeof *fwd; i++)
		sigaddset(&mask, fwd[i]);
	sigprocmask(SIG_BLOCK, &mask, &oldmask);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

	int out[2], errp[2], ep[2];
	int devnull = open("/dev/null", O_RDWR);
	if (sfd < 0 || pipe2(out, O_CLOEXEC) || pipe2(errp, O_CLOEXEC) || pipe2(ep, O_CLOEXEC) ||
	    devnull < 0)
		fail(125, "cannot set up the main process's pipes");
	pid_t main_pid = fork();
	if (main_pid < 0)
		fail(125, "fork failed");
	if (main_pid == 0) {
		err_fd = ep[1];
		dup2(devnull, 0), dup2(out[1], 1), dup2(errp[1], 2);
		sigprocmask(SIG_SETMASK, &oldmask, NULL);
		setsid();
		run_child(cargv, cenv, nenv, workdir, user ? user : (char *)"", root);
	}
	close(out[1]), close(errp[1]), close(ep[1]), close(devnull);

	/* Did exec succeed? The CLOEXEC pipe closes empty on success. */
	char ebuf2[4096];
	ssize_t en = read(ep[0], ebuf2, sizeof ebuf2 - 1);
	int failed_code = 0;
	if (en > 0) {
		ebuf2[en] = 0;
		char *msg = strchr(ebuf2, ' ');
		failed_code = atoi(ebuf2);
		say("%s", msg ? msg + 1 : ebuf2);
		status_line("error %d %s", failed_code, msg ? msg + 1 : ebuf2);
	} else {
		status_line("started %llu", (unsigned long long)now_ns());
	}
	close(ep[0]);

	int out_open = 1, err_open = 1, main_done = 0, code = 0;
	while (out_open || err_open || !main_done) {
		struct pollfd p[3] = {{sfd, POLLIN, 0}, {out[0], POLLIN, 0}, {errp[0], POLLIN, 0}};
		if (!out_open)
			p[1].fd = -1;
		if (!err_open)
			p[2].fd = -1;
		if (poll(p, 3, -1) < 0 && errno != EINTR)
			break;
		/* Output first, so what the process wrote before it died is never lost. */
		if (p[1].revents)
			pump(out[0], 1, &out_open);
		if (p[2].revents)
			pump(errp[0], 2, &err_open);
		if (!(p[0].revents & POLLIN))
			continue;
		struct signalfd_siginfo si;
		if (read(sfd, &si, sizeof si) != sizeof si)
			continue;
		if (si.ssi_signo != SIGCHLD) {
			int sig = (int)si.ssi_signo;
			if (sig == SIGINT && si.ssi_code == SI_KERNEL)
				sig = SIGTERM; /* ctrl-alt-del from the host: stop */
			if (!main_done)
				kill(main_pid, sig);
			continue;
		}
		int st;
		pid_t pid;
		while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
			if (pid != main_pid)
				continue;
			main_done = 1;
			code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
			/* Drain what is already readable, then end every leftover process so
			 * that the pipes reach EOF (daemons may hold them open). */
			while (out_open || err_open) {
				struct pollfd q[2] = {{out_open ? out[0] : -1, POLLIN, 0},
						      {err_open ? errp[0] : -1, POLLIN, 0}};
				if (poll(q, 2, 0) <= 0)
					break;
				if (q[0].revents)
					pump(out[0], 1, &out_open);
				if (q[1].revents)
					pump(errp[0], 2, &err_open);
			}
			kill(-1, SIGKILL);
		}
	}
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	if (failed_code)
		code = failed_code;
	unmount_root(root);
	power_off(code);
}
