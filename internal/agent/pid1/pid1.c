// PID 1 of the guest, before the Go runtime starts.
//
// The guest needs two processes at the top: PID 1, which must reap every
// orphan, and the agent service, whose children (containers, through
// libcontainer) must be reaped only by libcontainer, which waits for them
// by pid; a wait4(-1) reaper in the same process would steal their exit
// statuses. Forking here, in a constructor that runs before the Go
// runtime, makes the two from one start of the binary: the child goes on
// into Go and becomes the service; the parent never enters Go and only
// reaps. Starting the Go runtime a second time (PID 1, then exec'ing the
// service) cost ~0.1 s of every boot under TCG.
//
// The constructor does nothing in any other process. runc's init also
// starts this binary, with "init" as its argument; nsexec's constructor
// there clones the container's first process into a new PID namespace,
// where it is PID 1 and goes on to run the remaining constructors: this
// one runs first (priority 101, before nsexec's default priority) and
// also skips any process started as `init`.

#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <unistd.h>

// berth_pid1_service is 1 in the agent service PID 1 forked (read by Go).
int berth_pid1_service;

static void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	// reboot returns only on failure; PID 1 must not exit.
	for (;;)
		pause();
}

__attribute__((constructor(101))) static void berth_pid1(int argc, char **argv)
{
	if (getpid() != 1 || (argc > 1 && strcmp(argv[1], "init") == 0))
		return;
	// A CRI pod's namespace holder (podholder/holder.c) is PID 1 of its
	// own PID namespace, and not the guest's first process.
	if (argc > 0 && strcmp(argv[0], "berth-pod-holder") == 0)
		return;
	pid_t service = fork();
	if (service < 0) {
		fprintf(stderr, "berth-agent: PID 1 cannot start the agent service: fork: %s; powering off\n", strerror(errno));
		power_off();
	}
	if (service == 0) {
		berth_pid1_service = 1;
		return;
	}
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, 0);
		if (pid == service) {
			if (WIFSIGNALED(status))
				fprintf(stderr, "berth-agent: service exited (signal %d); powering off\n", WTERMSIG(status));
			else
				fprintf(stderr, "berth-agent: service exited (status %d); powering off\n", WEXITSTATUS(status));
			power_off();
		}
		if (pid < 0 && errno != EINTR) {
			// ECHILD cannot happen while the service lives; do not spin.
			fprintf(stderr, "berth-agent: wait: %s\n", strerror(errno));
			sleep(1);
		}
	}
}
