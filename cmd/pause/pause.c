/*
 * pause: holds a pod's namespaces for as long as the pod lives.
 *
 * The first process of every berth pod sandbox. It sleeps until told to
 * stop (SIGINT or SIGTERM) and reaps any child reparented to it when it is
 * the pod's pid 1. berth starts it from its own binary, so a pod needs no
 * pause image.
 *
 * Built without libc, from raw system calls: one runs per pod, and a
 * static glibc pause is 680 KiB that every pod maps whole (the kernel
 * maps file pages around each fault, 64 KiB at a time), where this one is
 * two pages. It installs no signal handler: the signals it acts on are
 * blocked and taken with rt_sigtimedwait. A blocked signal is queued even
 * to a namespace's init, which drops signals it has no handler for.
 */
#include <asm/unistd.h>
#include <linux/signal.h>
#include <linux/wait.h>

#if defined(__x86_64__)
__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	xor %rbp, %rbp\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call start\n"
	"	hlt\n");

static long sys(long n, long a, long b, long c, long d)
{
	register long r10 __asm__("r10") = d;
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
}
#elif defined(__aarch64__)
__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	mov x29, #0\n"
	"	mov x30, #0\n"
	"	mov x0, sp\n"
	"	bl start\n"
	"	brk #0\n");

static long sys(long n, long a, long b, long c, long d)
{
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;

	__asm__ volatile("svc #0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2), "r"(x3)
			 : "memory");
	return x0;
}
#else
#error "pause: no system call entry for this architecture (x86_64 and aarch64 have one)"
#endif

/* The kernel's signal set: 64 signals, one bit each. */
#define SET_SIZE 8
#define BIT(sig) (1UL << ((sig) - 1))

static void say(int fd, const char *s)
{
	long n = 0;

	while (s[n])
		n++;
	sys(__NR_write, fd, (long)s, n, 0);
}

static void quit(int code)
{
	for (;;)
		sys(__NR_exit_group, code, 0, 0, 0);
}

/* start is called from _start with the initial stack: argc, then argv. */
__attribute__((used, noreturn)) void start(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	unsigned long set = BIT(SIGINT) | BIT(SIGTERM) | BIT(SIGCHLD);
	char info[128]; /* a siginfo_t; only the signal number is used */

	if (argc > 1 && argv[1][0] == '-' && argv[1][1] == 'v' && argv[1][2] == 0) {
		say(1, "berth pause\n");
		quit(0);
	}
	if (sys(__NR_getpid, 0, 0, 0, 0) != 1)
		say(2, "pause: warning: not pid 1, children are reaped by another process\n");
	if (sys(__NR_rt_sigprocmask, SIG_BLOCK, (long)&set, 0, SET_SIZE) < 0)
		quit(1);
	for (;;) {
		long sig = sys(__NR_rt_sigtimedwait, (long)&set, (long)info, 0, SET_SIZE);

		if (sig == SIGINT || sig == SIGTERM)
			quit(128 + (int)sig);
		if (sig == SIGCHLD)
			while (sys(__NR_wait4, -1, 0, WNOHANG, 0) > 0)
				;
	}
}
