/*
 * dirtier: keep a chunk of guest memory dirty so live migration has work to do.
 *
 *   dirtier MIB RATE
 *
 * Allocates MIB MiB, touches every page once, then rewrites one byte in every 4 KiB page,
 * page after page, at RATE MiB/s of dirtied pages (RATE 0 = as fast as the vCPU allows).
 * Once a second it prints how many MiB it has dirtied so far.
 * Built static (gcc -O2 -static) at lab build time; it runs in a busybox initramfs.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define BATCH 64UL /* pages between clock reads */

static double monotonic_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	unsigned long mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
	double rate_mib_s = argc > 2 ? strtod(argv[2], NULL) : 0.0;
	if (mib == 0)
		return 0;

	unsigned long npages = mib * (1024UL * 1024UL / PAGE);
	volatile uint8_t *mem = malloc(npages * PAGE);
	if (mem == NULL) {
		fprintf(stderr, "dirtier: cannot allocate %lu MiB\n", mib);
		return 1;
	}
	memset((void *)mem, 0x5a, npages * PAGE);

	unsigned long page = 0, pass = 0, dirtied = 0;
	double start = monotonic_s(), last_report = start;
	for (;;) {
		for (unsigned long i = 0; i < BATCH; i++) {
			/* a different byte each pass so the page content really changes */
			mem[page * PAGE + (pass % PAGE)] = (uint8_t)(pass + page);
			dirtied++;
			if (++page == npages) {
				page = 0;
				pass++;
			}
		}
		double now = monotonic_s();
		if (rate_mib_s > 0) {
			double due = (double)dirtied * PAGE / (rate_mib_s * 1048576.0);
			double ahead = due - (now - start);
			if (ahead > 0)
				usleep((useconds_t)(ahead * 1e6));
		}
		if (now - last_report >= 1.0) {
			printf("dirtier: t=%.0fs dirtied=%luMiB\n", now - start, dirtied * PAGE >> 20);
			fflush(stdout);
			last_report = now;
		}
	}
}
