/*
 * The terminal side of a batch: per-file lines on stdout, a progress bar on
 * stderr, and the counters behind the summary.
 *
 * One process-wide instance (there is one terminal). All functions are
 * thread-safe. The bar is drawn only when enabled (stderr is a TTY and not
 * --quiet), redrawn in place with '\r' at most every 100 ms, and erased before
 * any line is printed so lines and bar never mix.
 */
#ifndef TN_CLIENT_PROGRESS_H
#define TN_CLIENT_PROGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* lines: where the per-file lines and the summary go (stdout, or stderr when
 * stdout carries --json or a thumbnail). */
void tn_progress_init(bool bar, size_t total_files, FILE *lines);

/* The stream given to tn_progress_init() (stdout before it). */
FILE *tn_progress_lines(void);

/* n more bytes of video sent. */
void tn_progress_add_bytes(uint64_t n);

/* A file is finished (any outcome): print its line (NULL = none) to the lines
 * stream, and its JSON object (NULL = none) as one line on stdout. */
void tn_progress_file_done(const char *line, const char *json);

/* Print a line to stdout or stderr without counting a file. */
void tn_progress_print(bool to_stderr, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Erase the bar for good (before the summary). */
void tn_progress_finish(void);

uint64_t tn_progress_bytes(void);

/* Pull and local mode: n more bytes of video thumbnailed (whole files, however
 * few of their bytes were sent), for "sent 3.1 MiB for 1.2 GiB of video". */
void tn_progress_add_video(uint64_t n);
uint64_t tn_progress_video_bytes(void);

/* "12.3 MiB" into buf. */
const char *tn_progress_fmt_bytes(char *buf, size_t len, double bytes);

#endif
