/* The lazy-pull benchmark's entry point: reads the files it is given (a
 * few MB of a big image, as a model server reads its index first), then
 * answers every HTTP request on 127.0.0.1:PORT with how much it read. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
	static char buf[1 << 16];
	long total = 0;
	if (argc < 2) {
		fprintf(stderr, "usage: lazysrv PORT FILE...\n");
		return 2;
	}
	for (int i = 2; i < argc; i++) {
		int fd = open(argv[i], O_RDONLY);
		if (fd < 0) {
			perror(argv[i]);
			return 1;
		}
		ssize_t n;
		while ((n = read(fd, buf, sizeof buf)) > 0)
			total += n;
		if (n < 0) {
			perror(argv[i]);
			return 1;
		}
		close(fd);
	}
	int s = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons(atoi(argv[1]));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
		perror("listen");
		return 1;
	}
	char body[64], resp[256];
	int bn = snprintf(body, sizeof body, "read %ld bytes\n", total);
	int rn = snprintf(resp, sizeof resp, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s", bn, body);
	for (;;) {
		int c = accept(s, NULL, NULL);
		if (c < 0)
			continue;
		char req[1024];
		if (read(c, req, sizeof req) > 0)
			write(c, resp, rn);
		close(c);
	}
}
