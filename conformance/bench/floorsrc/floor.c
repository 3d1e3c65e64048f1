// floor: the least a container start can cost on this machine. Clone a
// child into new pid, mount, uts, ipc and network namespaces, chroot it
// into the rootfs given as argv[1], exec /bin/true, wait for it.
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static char stack[1 << 16];

static int child(void *arg)
{
	char *argv[] = {"/bin/true", NULL};
	char *envp[] = {"PATH=/bin", NULL};

	if (chroot((const char *)arg) != 0 || chdir("/") != 0)
		return 126;
	execve("/bin/true", argv, envp);
	return 127;
}

int main(int argc, char **argv)
{
	int flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | SIGCHLD;
	int status;
	pid_t pid;

	if (argc != 2) {
		fprintf(stderr, "usage: floor ROOTFS\n");
		return 2;
	}
	pid = clone(child, stack + sizeof(stack), flags, argv[1]);
	if (pid < 0) {
		perror("clone");
		return 1;
	}
	if (waitpid(pid, &status, 0) < 0) {
		perror("waitpid");
		return 1;
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
