// The pod's namespace holder: what a CRI pod sandbox's process is in the
// guest, in place of running the pause image through runc.
//
// A pod sandbox's process only holds the pod's namespaces (IPC, UTS and,
// when the pod shares one, PID), which the app containers join through
// /proc/<pid>/ns, and reaps orphans when it is PID 1 of a shared PID
// namespace. Starting the pause image through runc for that cost a whole
// runc init (~0.25 s under TCG: a Go runtime start of the agent binary,
// mounts, pivot_root). CRI-O does the same for the same reason
// (drop_infra_ctr, namespaces pinned with pinns).
//
// The agent starts this binary as "berth-pod-holder HOSTNAME ROOT
// [KEY=VALUE...]" with the namespaces already created by clone(2). This
// constructor (priority 102) acts only in a process started under that
// name, which PID 1's split (pid1.c, priority 101) skips although it is
// PID 1 of its namespace, and nsexec ignores (no _LIBCONTAINER_INITPIPE);
// it never returns into Go:
//
//  1. sets the pod's hostname in its new UTS namespace, and the pod's
//     sysctls (IPC and UTS ones: the agent has set the network's) through
//     /proc/sys;
//  2. confines itself as the pause image does and more: chroot into the
//     pod sandbox's (read-only) root, uid and gid 65535 with no groups,
//     which leaves it no capabilities, no_new_privs, not dumpable (so
//     a container sharing its PID namespace cannot ptrace it without
//     CAP_SYS_PTRACE);
//  3. reports ready by writing one byte to fd 3, and closes it;
//  4. waits for signals: SIGCHLD reaps every exited child, SIGTERM and
//     SIGINT exit 0 (as pause does). As PID 1 of a namespace it gets only
//     signals it has a handler for, and SIGKILL from the agent.

#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define HOLDER_ARGV0 "berth-pod-holder"
#define HOLDER_ID 65535
#define READY_FD 3

static void die(const char *what)
{
	fprintf(stderr, "berth-pod-holder: %s: %s\n", what, strerror(errno));
	_exit(125);
}

// set_sysctl writes KEY=VALUE to /proc/sys/KEY with dots as slashes. The
// agent has checked the key (letters, digits, '_', '-', single dots).
static void set_sysctl(const char *kv)
{
	const char *eq = strchr(kv, '=');
	char path[256];
	size_t klen = eq ? (size_t)(eq - kv) : 0;
	if (klen == 0 || klen + sizeof "/proc/sys/" > sizeof path) {
		fprintf(stderr, "berth-pod-holder: sysctl %s: not KEY=VALUE\n", kv);
		_exit(125);
	}
	memcpy(path, "/proc/sys/", 10);
	for (size_t i = 0; i < klen; i++)
		path[10 + i] = kv[i] == '.' ? '/' : kv[i];
	path[10 + klen] = '\0';
	FILE *f = fopen(path, "w");
	if (f == NULL || fputs(eq + 1, f) == EOF || fclose(f) != 0) {
		fprintf(stderr, "berth-pod-holder: sysctl %.*s: %s\n", (int)klen, kv, strerror(errno));
		_exit(125);
	}
}

static void on_exit_signal(int sig)
{
	(void)sig;
	_exit(0);
}

static void on_child(int sig) { (void)sig; }

__attribute__((constructor(102))) static void berth_pod_holder(int argc, char **argv)
{
	if (argc < 1 || strcmp(argv[0], HOLDER_ARGV0) != 0)
		return;
	if (argc < 3) {
		fprintf(stderr, "berth-pod-holder: usage: berth-pod-holder HOSTNAME ROOT [KEY=VALUE...]\n");
		_exit(125);
	}
	const char *hostname = argv[1], *root = argv[2];
	// What ps shows for the pod's PID 1 (the comm would be "exe", from
	// /proc/self/exe).
	prctl(PR_SET_NAME, "berth-holder", 0, 0, 0);
	if (hostname[0] != '\0' && sethostname(hostname, strlen(hostname)) != 0)
		die("sethostname");
	for (int i = 3; i < argc; i++)
		set_sysctl(argv[i]);
	if (chroot(root) != 0)
		die("chroot");
	if (chdir("/") != 0)
		die("chdir /");
	if (setgroups(0, NULL) != 0)
		die("setgroups");
	if (setresgid(HOLDER_ID, HOLDER_ID, HOLDER_ID) != 0)
		die("setresgid");
	// From uid 0 to a non-zero uid without PR_SET_KEEPCAPS, the kernel
	// clears the permitted, effective and ambient capabilities.
	if (setresuid(HOLDER_ID, HOLDER_ID, HOLDER_ID) != 0)
		die("setresuid");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		die("no_new_privs");
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
		die("dumpable");

	sigset_t chld, waitmask;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	// SIGCHLD stays blocked except inside sigsuspend, so a child that
	// exits between the reaping loop and the wait is not missed.
	if (sigprocmask(SIG_BLOCK, &chld, &waitmask) != 0)
		die("sigprocmask");
	sigdelset(&waitmask, SIGCHLD);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_exit_signal;
	if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
		die("sigaction");
	sa.sa_handler = on_child;
	sa.sa_flags = SA_NOCLDSTOP;
	if (sigaction(SIGCHLD, &sa, NULL) != 0)
		die("sigaction SIGCHLD");

	char ready = 'R';
	if (write(READY_FD, &ready, 1) != 1)
		die("report ready");
	close(READY_FD);
	for (;;) {
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		sigsuspend(&waitmask);
	}
}
