/*
 * hv guest agent: shared helpers, and entering the container (chroot, Docker's user rules,
 * workdir, exec searching the container's PATH) for the main process and for `exec`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("hv-agent: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* 0 when everything was written, -1 otherwise. */
int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

void frame_header(unsigned char *h, int type, uint32_t len, uint64_t ts)
{
	memset(h, 0, 16);
	h[0] = (unsigned char)type;
	for (int i = 0; i < 4; i++)
		h[4 + i] = (unsigned char)(len >> (24 - 8 * i));
	for (int i = 0; i < 8; i++)
		h[8 + i] = (unsigned char)(ts >> (56 - 8 * i));
}

/* Read a whole seed file (NUL-terminated in memory); NULL if missing. */
char *slurp(const char *dir, const char *name, size_t *len)
{
	char path[512];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
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
	if (!buf) {
		say("out of memory");
		exit(125);
	}
	buf[n] = 0;
	if (len)
		*len = n;
	return buf;
}

/* Split NUL-terminated items into a NULL-terminated vector with room for EXTRA more. */
char **split0(char *buf, size_t len, int extra)
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

const char *getenv_in(char **env, const char *key)
{
	size_t kl = strlen(key);
	for (; *env; env++)
		if (strncmp(*env, key, kl) == 0 && (*env)[kl] == '=')
			return *env + kl + 1;
	return NULL;
}

int all_digits(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return 0;
	return 1;
}

/* ---- the child: becomes the container's main process or an exec'd process ------------ */

static int err_fd;     /* CLOEXEC pipe back to the parent: "CODE MESSAGE", only on failure */
static int exec_mode;  /* messages and codes of `docker exec` rather than `docker run` */

#define OCI_EXEC "OCI runtime exec failed: exec failed: unable to start container process: "

/* Report and exit. RUNTIME: a runc-level failure, which `docker exec` words as
 * "OCI runtime exec failed: ...: unknown". */
static void __attribute__((noreturn, format(printf, 3, 4)))
child_fail(int code, int runtime, const char *fmt, ...)
{
	char msg[3500], buf[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (exec_mode && runtime)
		snprintf(buf, sizeof buf, "%d " OCI_EXEC "%s: unknown", code, msg);
	else
		snprintf(buf, sizeof buf, "%d %s", code, msg);
	write_all(err_fd, buf, strlen(buf));
	_exit(code);
}

/* strerror as Go words it: lower case. */
static const char *go_err(int err)
{
	static char buf[128];
	snprintf(buf, sizeof buf, "%s", strerror(err));
	if (buf[0] >= 'A' && buf[0] <= 'Z')
		buf[0] = (char)(buf[0] - 'A' + 'a');
	return buf;
}

/* Docker's rules (runc's GetExecUser): user by name or uid, optional :group or :gid; a
 * numeric uid absent from passwd runs with gid 0; supplementary groups from /etc/group
 * only when no group was given. Returns HOME (from passwd, else "/"). */
static const char *switch_user(char *spec)
{
	int bad_user = exec_mode ? 126 : 125;
	char *grp = strchr(spec, ':');
	if (grp)
		*grp++ = 0;
	const char *name = *spec ? spec : "0";
	uid_t uid = 0;
	gid_t gid = 0;
	const char *home = "/", *pwname = NULL;
	FILE *f = fopen("/etc/passwd", "re");
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
		child_fail(bad_user, 0, "unable to find user %s: no matching entries in passwd file",
			   name);
	}
	if (f)
		fclose(f);

	gid_t groups[NGROUPS_MAX];
	int ngroups = 0, found = 0;
	f = fopen("/etc/group", "re");
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
			child_fail(bad_user, 0,
				   "unable to find group %s: no matching entries in group file", grp);
		gid = (gid_t)strtoul(grp, NULL, 10);
	}
	if (setgroups((size_t)ngroups, groups) || setgid(gid) || setuid(uid))
		child_fail(bad_user, 1, "cannot switch to user %s: %s", spec, go_err(errno));
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
			child_fail(125, 1, "cannot create workdir %s: %s", dir, strerror(errno));
		*p = '/';
	}
}

static void exec_error(const char *arg0, const char *shown, int err)
{
	if (err == ENOENT || err == ENOTDIR)
		child_fail(127, 1, "exec: \"%s\": stat %s: no such file or directory", arg0, shown);
	if (err == EACCES || err == EPERM || err == ENOEXEC || err == EISDIR)
		child_fail(126, 1, "exec: \"%s\": %s", arg0,
			   err == ENOEXEC ? "exec format error" : "permission denied");
	child_fail(exec_mode ? 126 : 125, 1, "exec: \"%s\": %s", arg0, go_err(err));
}

void run_child(struct proc_spec *ps)
{
	char **argv = ps->argv, **env = ps->env;
	int nenv = ps->nenv;
	err_fd = ps->err_fd;
	exec_mode = ps->exec_mode;
	if (enter_netns())
		child_fail(125, 1, "cannot enter the container's network namespace: %s",
			   strerror(errno));
	if (chroot(ps->root) || chdir("/"))
		child_fail(125, 1, "cannot enter the container root %s: %s", ps->root,
			   strerror(errno));
	if (ps->tty) {
		int t = open(ps->tty, O_RDWR);
		if (t < 0 || ioctl(t, TIOCSCTTY, 0) < 0)
			child_fail(125, 1, "cannot open the terminal %s: %s", ps->tty,
				   strerror(errno));
		dup2(t, 0), dup2(t, 1), dup2(t, 2);
		if (t > 2)
			close(t);
	}
	if (!exec_mode)
		mkdir_p(ps->workdir);
	const char *home = switch_user(ps->user);
	if (chdir(ps->workdir)) {
		if (exec_mode)
			child_fail(126, 1, "chdir to cwd (\"%s\") set in config.json failed: %s",
				   ps->workdir, go_err(errno));
		child_fail(125, 1, "cannot chdir to %s: %s", ps->workdir, strerror(errno));
	}
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
	child_fail(127, 1, "exec: \"%s\": executable file not found in $PATH", argv[0]);
}
