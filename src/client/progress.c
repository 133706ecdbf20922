#include "progress.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

#include "ipc.h" /* tn_mono_ms */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bool bar_enabled;
static bool bar_shown;
static size_t files_total;
static size_t files_done;
static uint64_t bytes_sent;
static uint64_t video_bytes; /* whole files done, however they were sent */
static double started;
static double last_draw;
static FILE *lines_out;

const char *tn_progress_fmt_bytes(char *buf, size_t len, double bytes)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
    return buf;
}

/* Called with the lock held. */
static void erase_locked(void)
{
    if (bar_shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        bar_shown = false;
    }
}

/* Called with the lock held. */
static void draw_locked(bool force)
{
    if (!bar_enabled)
        return;
    double t = ((double)tn_mono_ms() / 1e3);
    if (!force && t - last_draw < 0.1)
        return;
    last_draw = t;
    enum { WIDTH = 24 };
    char bar[WIDTH + 1];
    size_t fill = files_total ? files_done * WIDTH / files_total : 0;
    for (size_t i = 0; i < WIDTH; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = 0;
    double el = t - started;
    char sent[32], rate[32];
    tn_progress_fmt_bytes(sent, sizeof(sent), (double)bytes_sent);
    tn_progress_fmt_bytes(rate, sizeof(rate), el > 0 ? (double)bytes_sent / el : 0);
    fprintf(stderr, "\r[%s] %zu/%zu files  %s sent  %s/s\033[K", bar, files_done, files_total, sent,
            rate);
    fflush(stderr);
    bar_shown = true;
}

FILE *tn_progress_lines(void)
{
    return lines_out ? lines_out : stdout;
}

void tn_progress_init(bool bar, size_t total_files, FILE *lines)
{
    pthread_mutex_lock(&lock);
    lines_out = lines;
    bar_enabled = bar;
    files_total = total_files;
    files_done = 0;
    bytes_sent = 0;
    video_bytes = 0;
    started = ((double)tn_mono_ms() / 1e3);
    last_draw = 0;
    draw_locked(true);
    pthread_mutex_unlock(&lock);
}

void tn_progress_add_bytes(uint64_t n)
{
    pthread_mutex_lock(&lock);
    bytes_sent += n;
    draw_locked(false);
    pthread_mutex_unlock(&lock);
}

void tn_progress_file_done(const char *line, const char *json)
{
    pthread_mutex_lock(&lock);
    files_done++;
    if (line) {
        erase_locked();
        fputs(line, tn_progress_lines());
        fputc('\n', tn_progress_lines());
        fflush(tn_progress_lines());
    }
    if (json) {
        fputs(json, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    draw_locked(true);
    pthread_mutex_unlock(&lock);
}

void tn_progress_print(bool to_stderr, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&lock);
    erase_locked();
    FILE *f = to_stderr ? stderr : tn_progress_lines();
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fflush(f);
    draw_locked(true);
    pthread_mutex_unlock(&lock);
}

void tn_progress_finish(void)
{
    pthread_mutex_lock(&lock);
    erase_locked();
    bar_enabled = false;
    pthread_mutex_unlock(&lock);
}

void tn_progress_add_video(uint64_t n)
{
    pthread_mutex_lock(&lock);
    video_bytes += n;
    pthread_mutex_unlock(&lock);
}

uint64_t tn_progress_video_bytes(void)
{
    pthread_mutex_lock(&lock);
    uint64_t b = video_bytes;
    pthread_mutex_unlock(&lock);
    return b;
}

uint64_t tn_progress_bytes(void)
{
    pthread_mutex_lock(&lock);
    uint64_t b = bytes_sent;
    pthread_mutex_unlock(&lock);
    return b;
}
