/* hv guest agent: what hv-init.c (PID 1), proc.c (entering the container) and session.c
 * (the SSH ForceCommand) share. Built with: gcc -static -Os -o hv-init agent/[a-z-]*.c */
#ifndef HV_AGENT_H
#define HV_AGENT_H

#include <stddef.h>
#include <stdint.h>

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define FRAME_MAX (32768 - 16) /* one frame per write: virtio_console takes <= 32 KiB */
#define SEED_DIR "/seed"
#define ROOT_DIR "/c"
#define RUN_DIR "/run/hv"
#define ATTACH_SOCK RUN_DIR "/attach.sock"
#define MAIN_PID_FILE RUN_DIR "/main.pid"
#define HOST_KEY_FILE RUN_DIR "/ssh_host_ed25519_key"
#define NETNS_FILE RUN_DIR "/netns" /* the container's network namespace (netns.c) */
#define BUSYBOX "/bin/busybox"

/* Frame types (hv.log and the attach socket share the 16-byte header). */
enum {
	FR_STDIN = 0,  /* client -> PID 1 */
	FR_STDOUT = 1, /* PID 1 -> client, hv.log */
	FR_STDERR = 2,
	FR_EXIT = 3,   /* PID 1 -> client: ASCII exit code */
	FR_EOF = 4,    /* client -> PID 1: close stdin */
	FR_RESIZE = 5, /* client -> PID 1: "ROWS COLS" */
};

void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
uint64_t now_ns(void);
int write_all(int fd, const void *buf, size_t len);
void frame_header(unsigned char *h, int type, uint32_t len, uint64_t ts);
char *slurp(const char *dir, const char *name, size_t *len);
char **split0(char *buf, size_t len, int extra);
const char *getenv_in(char **env, const char *key);
int all_digits(const char *s);

/* Entering the container (proc.c). */
struct proc_spec {
	char **argv;
	char **env;      /* room for 2 more entries (PATH, HOME) */
	int nenv;
	const char *workdir;
	char *user;      /* Docker's user spec; modified */
	const char *root;
	int exec_mode;   /* 0: the main process (workdir created); 1: `exec` (must exist) */
	const char *tty; /* open this PTY slave (inside the root) as 0/1/2, ctty; or NULL */
	int err_fd;      /* CLOEXEC pipe: "CODE MESSAGE" on failure */
};
void run_child(struct proc_spec *ps) __attribute__((noreturn));

/* The SSH ForceCommand (session.c). */
int session_main(void);

/* The container's NICs and network namespace (netns.c). */
int enter_netns(void);
int nics_main(int argc, char **argv);

/* The embedded resolver on 127.0.0.11 (dns.c). */
int dns_main(int argc, char **argv);

#endif
