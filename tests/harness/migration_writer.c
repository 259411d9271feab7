/*
 * /init of ferry's migration test guest (tests/harness/migration_guest.py
 * builds it with `gcc -static` at test time; no binary is committed).
 *
 * It dirties guest memory at a rate set on the kernel command line, so a
 * test chooses an idle, moderate or hostile writer, and prints its progress
 * on the console once a second, so the impact of a migration can be measured
 * and the writer can be seen continuing on the destination:
 *
 *   writer.mb=N       working set in MiB, filled with non-zero data first
 *                     (QEMU sends zero pages as a header only)
 *   writer.mbps=N     dirty rate in MB/s of 4 KiB pages rewritten;
 *                     0 idle, -1 as fast as the vCPU runs
 *   writer.cpu=1      CPU-bound instead of paced: each page costs enough
 *                     work that the vCPU at full speed dirties writer.mbps,
 *                     so a CPU throttle of t% cuts the rate by t%
 *   writer.disk=N     MiB of /dev/vda to keep writing (0 = no disk)
 *   writer.diskmbps=N disk write rate in MB/s
 *   writer.verify=S   re-read and check the whole disk region every S s
 *
 * Console lines:
 *   FERRY-WRITER t=<s> pages=<total> rate=<pages/s over the last second>
 *   FERRY-DISK verify=<n> blocks=<N> bad=<B> writes=<W> result=ok|BAD
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define BLOCK 4096

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void nap(double seconds)
{
	struct timespec ts = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
	nanosleep(&ts, NULL);
}

static uint64_t mix(uint64_t x)
{
	/* splitmix64: cheap, non-zero, never repeating within a block */
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* Compute and rewrite one whole page, as a program producing data does. The
 * CPU work per dirtied page is what lets QEMU's CPU throttle slow a writer
 * down: one that stored a word per page ran at about 20 GB/s of dirty pages
 * under TCG here, faster than any link even at the 99% throttle; this one
 * runs at a few hundred MB/s. */
static void touch(uint64_t *mem, uint64_t npages, uint64_t n, long work)
{
	uint64_t *page = mem + (n % npages) * (PAGE / 8);
	for (long k = 0; k < work; k++)
		for (int i = 0; i < PAGE / 8; i++)
			page[i] = mix(n * PAGE + i + k);
}

/* Work per page so that a vCPU running flat out dirties `rate` pages/s. */
static long calibrate(uint64_t *mem, uint64_t npages, double rate)
{
	uint64_t n = 0;
	double start = now();
	while (now() - start < 0.5)
		for (int i = 0; i < 64; i++)
			touch(mem, npages, n++, 1);
	long work = (long)(n / (now() - start) / rate + 0.5);
	return work < 1 ? 1 : work;
}

static long param(const char *cmdline, const char *key, long fallback)
{
	const char *p = strstr(cmdline, key);
	return p ? strtol(p + strlen(key), NULL, 10) : fallback;
}

static void load_modules(void)
{
	/* /modules lists the .ko files in dependency order (modules.dep) */
	char line[256];
	FILE *list = fopen("/modules", "r");
	if (!list)
		return;
	while (fgets(line, sizeof(line), list)) {
		line[strcspn(line, "\n")] = 0;
		int fd = open(line, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) != 0)
			printf("FERRY-WRITER cannot load %s\n", line);
		if (fd >= 0)
			close(fd);
	}
	fclose(list);
}

/* --- disk: self-checking 4 KiB blocks, written and re-read with O_DIRECT
 * so that every check reads the virtual disk, not the page cache --- */

struct block_head {
	char magic[8];
	uint64_t index, gen, sum;
};

static uint64_t payload_sum(const unsigned char *b)
{
	uint64_t s = 0;
	for (size_t i = sizeof(struct block_head); i < BLOCK; i += 8)
		s = mix(s ^ *(const uint64_t *)(b + i));
	return s;
}

static void fill_block(unsigned char *b, uint64_t index, uint64_t gen)
{
	struct block_head *h = (struct block_head *)b;
	memcpy(h->magic, "FERRYBLK", 8);
	h->index = index;
	h->gen = gen;
	for (size_t i = sizeof(*h); i < BLOCK; i += 8)
		*(uint64_t *)(b + i) = mix(index * 1000003 + gen * 7919 + i);
	h->sum = payload_sum(b);
}

static int disk_fd = -1;
static uint64_t *gens, nblocks, disk_writes, verifies;
static unsigned char *dbuf;

static void disk_write(uint64_t index)
{
	fill_block(dbuf, index, ++gens[index]);
	if (pwrite(disk_fd, dbuf, BLOCK, index * BLOCK) != BLOCK)
		printf("FERRY-DISK write error at block %llu\n", (unsigned long long)index);
	disk_writes++;
}

static void disk_verify(void)
{
	uint64_t bad = 0;
	for (uint64_t i = 0; i < nblocks; i++) {
		struct block_head *h = (struct block_head *)dbuf;
		if (pread(disk_fd, dbuf, BLOCK, i * BLOCK) != BLOCK ||
		    memcmp(h->magic, "FERRYBLK", 8) || h->index != i ||
		    h->gen != gens[i] || h->sum != payload_sum(dbuf))
			bad++;
	}
	printf("FERRY-DISK verify=%llu blocks=%llu bad=%llu writes=%llu result=%s\n",
	       (unsigned long long)++verifies, (unsigned long long)nblocks,
	       (unsigned long long)bad, (unsigned long long)disk_writes,
	       bad ? "BAD" : "ok");
	fflush(stdout);
}

static void disk_open(long mb)
{
	for (int i = 0; i < 200 && disk_fd < 0; i++) {
		disk_fd = open("/dev/vda", O_RDWR | O_DIRECT);
		if (disk_fd < 0)
			nap(0.05);
	}
	if (disk_fd < 0) {
		printf("FERRY-DISK no /dev/vda\n");
		return;
	}
	nblocks = (uint64_t)mb * (1 << 20) / BLOCK;
	gens = calloc(nblocks, sizeof(*gens));
	dbuf = aligned_alloc(PAGE, BLOCK);
	for (uint64_t i = 0; i < nblocks; i++)
		disk_write(i);
	fsync(disk_fd);
	disk_verify();
}

int main(void)
{
	mkdir("/dev", 0755);
	mkdir("/proc", 0755);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	mount("proc", "/proc", "proc", 0, NULL);
	int con = open("/dev/console", O_RDWR);
	if (con >= 0) {
		dup2(con, 1);
		dup2(con, 2);
	}
	setvbuf(stdout, NULL, _IOLBF, 0);

	char cmdline[4096] = "";
	int fd = open("/proc/cmdline", O_RDONLY);
	if (fd >= 0) {
		ssize_t n = read(fd, cmdline, sizeof(cmdline) - 1);
		cmdline[n > 0 ? n : 0] = 0;
		close(fd);
	}
	long mb = param(cmdline, "writer.mb=", 64);
	long mbps = param(cmdline, "writer.mbps=", 0);
	long disk_mb = param(cmdline, "writer.disk=", 0);
	long disk_mbps = param(cmdline, "writer.diskmbps=", 1);
	long verify_every = param(cmdline, "writer.verify=", 3);
	long cpu_bound = param(cmdline, "writer.cpu=", 0);

	load_modules();
	uint64_t npages = (uint64_t)mb * (1 << 20) / PAGE;
	uint64_t *mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		printf("FERRY-WRITER cannot map %ld MiB\n", mb);
		return 1;
	}
	for (uint64_t i = 0; i < npages * PAGE / 8; i++)
		mem[i] = mix(i);
	if (disk_mb > 0)
		disk_open(disk_mb);
	long work = 1;
	if (cpu_bound && mbps > 0) {
		work = calibrate(mem, npages, mbps * 1e6 / PAGE);
		mbps = -1;
	}
	printf("FERRY-WRITER ready mb=%ld mbps=%ld disk=%ld work=%ld\n", mb, mbps,
	       disk_mb, work);

	/* Rates are paced against the clock in short slices; a slice that
	 * fell behind (the vCPU was throttled or paused) catches up at most
	 * one slice's worth, so a throttle lowers the rate the writer gets. */
	double start = now(), last_report = start, last_verify = start;
	double page_rate = mbps * 1e6 / PAGE, block_rate = disk_mbps * 1e6 / BLOCK;
	double page_due = 0, block_due = 0, slice_start = start;
	uint64_t pages = 0, reported = 0, cursor = 0;
	for (;;) {
		double t = now(), slice = t - slice_start;
		slice_start = t;
		if (slice > 0.05)
			slice = 0.05;
		if (mbps < 0) {
			for (int i = 0; i < 64; i++)
				touch(mem, npages, pages++, work);
		} else if (mbps > 0) {
			page_due += page_rate * slice;
			for (; page_due >= 1; page_due--)
				touch(mem, npages, pages++, 1);
		}
		if (disk_fd >= 0) {
			block_due += block_rate * slice;
			for (; block_due >= 1; block_due--) {
				cursor = mix(cursor);
				disk_write(cursor % nblocks);
			}
			if (t - last_verify >= verify_every) {
				disk_verify();
				last_verify = now();
			}
		}
		if (t - last_report >= 1.0) {
			printf("FERRY-WRITER t=%.2f pages=%llu rate=%.0f\n", t - start,
			       (unsigned long long)pages, (pages - reported) / (t - last_report));
			reported = pages;
			last_report = t;
		}
		if (mbps >= 0)
			nap(0.005);
	}
}
