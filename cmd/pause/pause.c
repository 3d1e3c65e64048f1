/*
 * pause: holds a pod's namespaces for as long as the pod lives.
 *
 * The first process of every berth pod sandbox. It sleeps until told to
 * stop (SIGINT or SIGTERM) and reaps any child reparented to it when it is
 * the pod's pid 1. Built static and tiny: one runs per pod, and berth
 * starts it from its own binary, so a pod needs no pause image.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig)
{
	_exit(128 + sig);
}

static void reap(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(int argc, char **argv)
{
	struct sigaction sa;

	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("berth pause");
		return 0;
	}
	if (getpid() != 1)
		fprintf(stderr, "pause: warning: not pid 1, children are reaped by another process\n");

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = stop;
	if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
		return 1;
	sa.sa_handler = reap;
	sa.sa_flags = SA_NOCLDSTOP;
	if (sigaction(SIGCHLD, &sa, NULL) < 0)
		return 2;

	for (;;)
		pause();
	return 42;
}
