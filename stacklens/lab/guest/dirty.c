/* The lab guest: dirties memory at a chosen rate so that live migration has work to do.
 *
 * Command line (multiboot, from QEMU's -append): "rate=PAGES_PER_S wss=PAGES".
 * It writes one word in each page of a working set, cycling, `rate` pages per second
 * (0: as fast as it can). Time comes from the TSC, calibrated against the PIT at start.
 */
typedef unsigned int u32;
typedef unsigned long long u64;

#define PAGE 4096u
#define WSS_BASE 0x01000000u /* 16 MiB: above the kernel image and the multiboot data */

struct multiboot_info { u32 flags, mem_lower, mem_upper, boot_device, cmdline; };

static inline void outb(unsigned short port, unsigned char v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline unsigned char inb(unsigned short port) { unsigned char v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((u64)hi << 32) | lo; }

static u32 param(const char *cmd, const char *key, u32 dflt) {
    for (const char *p = cmd; p && *p; p++) {
        const char *k = key, *q = p;
        while (*k && *q == *k) { k++; q++; }
        if (!*k && *q == '=' && (p == cmd || p[-1] == ' ')) {
            u32 v = 0;
            for (q++; *q >= '0' && *q <= '9'; q++) v = v * 10 + (u32)(*q - '0');
            return v;
        }
    }
    return dflt;
}

/* TSC ticks in 10 ms: PIT channel 2 one-shot, polled on port 0x61 bit 5. */
static u64 tsc_per_10ms(void) {
    const u32 count = 11932; /* 1193182 Hz * 10 ms */
    outb(0x61, (inb(0x61) & ~0x02) | 0x01); /* gate on, speaker off */
    outb(0x43, 0xB0);                        /* channel 2, lobyte/hibyte, mode 0 */
    outb(0x42, count & 0xff);
    outb(0x42, count >> 8);
    u64 t0 = rdtsc();
    while (!(inb(0x61) & 0x20)) {}
    return rdtsc() - t0;
}

/* 64-bit division without libgcc (freestanding 32-bit build): shift and subtract. */
static u64 div64(u64 n, u64 d) {
    u64 q = 0, r = 0;
    for (int i = 63; i >= 0; i--) {
        r = (r << 1) | ((n >> i) & 1);
        if (r >= d) { r -= d; q |= (u64)1 << i; }
    }
    return q;
}

void guest_main(struct multiboot_info *mbi) {
    const char *cmd = (mbi->flags & 4) ? (const char *)mbi->cmdline : 0;
    u32 rate = param(cmd, "rate", 2000);
    u32 wss = param(cmd, "wss", 4096);
    u64 ticks_per_s = tsc_per_10ms() * 100;
    if (ticks_per_s == 0) ticks_per_s = 1;
    volatile u32 *mem = (volatile u32 *)WSS_BASE;
    u32 next = 0, stamp = 1;
    /* Touch the whole working set once so that its pages are not zero pages. */
    for (u32 i = 0; i < wss; i++) mem[i * (PAGE / 4)] = stamp;
    u64 ticks_per_page = rate ? div64(ticks_per_s, rate) : 0;
    u64 start = rdtsc();
    u64 done = 0;
    for (;;) {
        /* Pace: page number `done` is due `done * ticks_per_page` after start. */
        if (rate && rdtsc() - start < done * ticks_per_page) continue;
        mem[next * (PAGE / 4)] = ++stamp;
        if (++next == wss) next = 0;
        done++;
    }
}
