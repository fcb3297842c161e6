/* SPDX-License-Identifier: Apache-2.0 */
/* The undo journal of in-place realignment (byte layout: docs/JOURNAL.md). In short:
 *
 *   0      64   preamble: "NLSRJRNL", u32 version 2, u32 flags, u64 id, u64 created, u64 pid,
 *               reserved, XXH64 of bytes 0..55
 *   512    64   slot A  } "NLSRSLOT", u64 seq, u32 state, u64 records, u64 end, u64 last,
 *   1024   64   slot B  } u64 id, XXH64 of bytes 0..55; the valid slot with the higher seq wins
 *   4096   ..   records, back to back: a 96-byte header (type, name length, index, file size,
 *               range offset and length, payload length, byte-plane width, XXH64 of the
 *               original bytes, of the new bytes, of the payload, of the header and name),
 *               the file name, the payload (one zstd frame of a bitmap of the range's
 *               elements that change and their original bytes as byte planes; version 1,
 *               still read: every original byte of the range; for the final "end" record,
 *               the state JSON)
 *
 * Write order, which is what makes a kill at any moment recoverable: the journal is created
 * (header written, file and folder fsynced) before the first record; each batch of records is
 * appended and fsynced, then a slot naming them ("armed": records 0..n-1 may have their data
 * written) is written and fsynced, and only then are their ranges overwritten in the checkpoint.
 * At the end the data files are fsynced, the end record is appended and a slot marks the
 * journal complete. A record past the armed ones was never acted on, so a torn tail is the
 * normal trace of a crash; damage inside the armed records is refused.
 *
 * Rollback validates every armed record before it writes anything, marks the journal as
 * rolling back, writes the original bytes back, fsyncs and reads them back against their
 * checksums. Running it again after a crash in the middle gives the same result.
 *
 * Every write-class syscall of the writer, of rollback and of the helpers below (creates,
 * writes, fsyncs, renames, unlinks) is a fault point for the SIGKILL tests: see
 * nlsr_fault_reset. */
#ifndef NLSR_IO_JOURNAL_H
#define NLSR_IO_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "../common/ctx.h"

#define NLSR_JOURNAL_NAME ".nlsr-journal"
/* Written: 2 (range records hold only the changed elements' original bytes). Read: 1 and 2. */
#define NLSR_JOURNAL_VERSION 2u
/* Records start here; the bytes before hold the preamble and the two slots. */
#define NLSR_JOURNAL_DATA_START 4096u
/* Largest range one record may hold (the writer splits longer ones). */
#define NLSR_JOURNAL_MAX_RECORD (1u << 30)
/* Preamble flag: the files were opened through symbolic or hard links (--follow-links), so
 * rollback follows them too. */
#define NLSR_JOURNAL_FLAG_LINKS 1u

typedef enum nlsr_journal_state {
    NLSR_JOURNAL_NONE = 0,        /* no journal file */
    NLSR_JOURNAL_WRITING = 1,     /* a realignment is (or was, when it crashed) under way */
    NLSR_JOURNAL_COMPLETE = 2,    /* finished; the journal is the undo record */
    NLSR_JOURNAL_ROLLING_BACK = 3,/* a rollback started and has not finished */
    NLSR_JOURNAL_TORN = 4         /* its creation was interrupted: nothing was changed */
} nlsr_journal_state;

const char *nlsr_journal_state_name(int state);

/* ---- fault injection (tests) ----------------------------------------------------------- */

/* Reads the test switches from the environment and zeroes the count; every in-place job and
 * rollback calls it first. NLSR_TEST_KILL_AFTER_WRITES=N raises SIGKILL right after the N-th
 * fault point; with NLSR_TEST_KILL_TORN=1 a write at that point writes only the first half of
 * its bytes before the kill (a torn write). NLSR_TEST_JOURNAL_RECORD=BYTES caps the bytes per
 * record (default 4 MiB) so that small test checkpoints have many points. Unset: no effect.
 * Test builds (-DNLSR_TEST_HOOKS=ON) only: a release build ignores the three. */
void nlsr_fault_reset(void);
/* Fault points passed since the last reset. */
uint64_t nlsr_fault_count(void);
/* 1 when NLSR_TEST_KILL_AFTER_WRITES is set (the job then logs its count at debug level). */
int nlsr_fault_armed(void);
/* NLSR_TEST_JOURNAL_RECORD, or 0 when unset. */
uint64_t nlsr_fault_record_bytes(void);

/* ---- durable file helpers, each step a fault point -------------------------------------- */

/* Writes `len` bytes to dir/name through dir/name.tmp (created, written, fsynced, renamed,
 * folder fsynced): the file is either the old one or the new one after a crash. */
int nlsr_durable_write_file(nlsr_ctx *ctx, const char *dir, const char *name, const void *data,
                            size_t len);
/* Unlinks dir/name (absent is fine) and fsyncs the folder. */
int nlsr_durable_unlink(nlsr_ctx *ctx, const char *dir, const char *name);

/* ---- writer ------------------------------------------------------------------------------ */

typedef struct nlsr_journal nlsr_journal;

typedef struct nlsr_journal_opts {
    uint64_t record_bytes; /* original bytes per record at most; 0: 4 MiB */
    uint64_t batch_bytes;  /* new bytes staged before a batch is armed and written; 0: up to
                              64 MiB, less when the budget is tight */
    int follow_links;      /* open files through symbolic and hard links */
    int builders;          /* 2: records are built on two threads where the machine has two
                              cores (the second thread's buffers charged too: see
                              nlsr_journal_buffer_bytes); 0 or 1: on the caller's */
} nlsr_journal_opts;

/* Bytes the writer's buffers take with these record and batch sizes (as given in the options)
 * and 1 or 2 builders: for a caller that keeps memory aside for the journal. */
uint64_t nlsr_journal_buffer_bytes(uint64_t record_bytes, uint64_t batch_bytes, int builders);

/* Starts a journal for the folder `dir`. Nothing is created on disk until the first record
 * (or nlsr_journal_complete). The caller holds the folder's lock and has checked that no
 * journal exists. Buffers are charged to ctx's budget. */
int nlsr_journal_begin(nlsr_ctx *ctx, const char *dir, const nlsr_journal_opts *o,
                       nlsr_journal **out);
/* Opens dir/name for writing and returns its file id (0, 1, ... in call order). Refused with a
 * message naming the file: a symbolic link (unless follow_links; a shared store such as the
 * Hugging Face cache), a file with other hard links (same), no write permission bit (even for
 * root: a read-only mark is respected), not a regular file, or open failing. */
int nlsr_journal_add_file(nlsr_journal *j, const char *name, uint32_t *id);
/* Stages the overwrite of [off, off + len) of file `id`: `orig` must be the range's current
 * bytes, `neu` what it becomes; `width` (1, 2, 4 or 8, dividing len) is the element size used
 * for byte planes. The original bytes are journaled now (appended, not yet fsynced); the new
 * bytes are kept and written when the batch is armed. Ranges must not overlap. */
int nlsr_journal_stage(nlsr_journal *j, uint32_t id, uint64_t off, const void *orig,
                       const void *neu, size_t len, size_t width);
/* nlsr_journal_stage for only the bytes that change: [off, off + len) is cut into grains of
 * NLSR_JOURNAL_GRAIN bytes at file offsets that are multiples of it (relative to off when off
 * is not a multiple of width), and the grains whose new bytes differ from the original ones
 * are staged, adjacent ones as one range. Runs of unchanged bytes are neither journaled nor
 * written. Checks for cancellation even when nothing changes. */
#define NLSR_JOURNAL_GRAIN 4096u
/* The records' zstd level. A fast (negative) level: the journal is written once and read only
 * on rollback, and its compression was most of phase B's CPU; the byte planes do most of the
 * work on float data. Measured on 8 llama-8b layers in place (1.6 GB patched, 3 cold runs
 * each): level 1, phase B 4.6 s and a journal of 323 MB; -3, 3.9 s and 366 MB; -8, 3.6 s and
 * 384 MB (the extra 61 MB take the disk about 0.05 s). Any level reads back the same. */
#define NLSR_JOURNAL_ZLEVEL (-8)
int nlsr_journal_stage_changed(nlsr_journal *j, uint32_t id, uint64_t off, const void *orig,
                               const void *neu, size_t len, size_t width);
/* Arms the staged records (fsync, slot, fsync) and writes their new bytes. A no-op when
 * nothing is staged. Callers flush at tensor boundaries. */
int nlsr_journal_flush(nlsr_journal *j);
/* Flushes and fsyncs every file written. */
int nlsr_journal_sync(nlsr_journal *j);
/* Appends the end record (holding `json`, the state the folder records) and marks the journal
 * complete. Call after nlsr_journal_sync. */
int nlsr_journal_complete(nlsr_journal *j, const char *json);
/* The journal's id (also in the preamble); ties the state file to it. */
uint64_t nlsr_journal_id(const nlsr_journal *j);
/* 1 once the journal file exists on disk. */
int nlsr_journal_created(const nlsr_journal *j);
/* XXH64 over (file name, NUL, u64 offset, u64 length, u64 XXH64 of the new bytes) of every
 * staged range in order: the fingerprint of the result. */
uint64_t nlsr_journal_result(const nlsr_journal *j);
/* Checkpoint bytes overwritten and journal bytes written so far. */
void nlsr_journal_counts(const nlsr_journal *j, uint64_t *data_bytes, uint64_t *journal_bytes,
                         uint64_t *ranges);
/* Path and size recorded for file `id` when it was added. */
const char *nlsr_journal_file_path(const nlsr_journal *j, uint32_t id);
/* Closes every file and frees; the journal file stays as it is. NULL is a no-op. */
void nlsr_journal_close(nlsr_journal *j);

/* ---- reader and rollback ----------------------------------------------------------------- */

typedef struct nlsr_journal_info {
    nlsr_journal_state state;
    uint64_t id;
    uint32_t flags;
    uint32_t version;       /* 1 or 2 */
    uint64_t created;       /* unix seconds */
    uint64_t records;       /* records the best slot covers (armed; with the end record) */
    uint64_t file_size;     /* bytes of the journal file */
    char *end_json;         /* complete only: the end record's JSON (malloc'd) */
    /* filled by rollback */
    uint64_t restored_ranges, restored_bytes;
} nlsr_journal_info;

void nlsr_journal_info_free(nlsr_journal_info *info);

/* Reads the preamble and the slots of dir's journal (and the end record of a complete one).
 * NONE when there is no journal; TORN when its creation was interrupted (at most the header
 * block exists: nothing was changed). A damaged preamble or slots of a journal that has
 * records: NLSR_E_CHECKSUM naming the file. */
int nlsr_journal_inspect(nlsr_ctx *ctx, const char *dir, nlsr_journal_info *info);

/* Restores the original bytes of every record of dir's journal and verifies them against the
 * recorded checksums. Nothing is written unless every armed record is intact (else
 * NLSR_E_CHECKSUM or NLSR_E_JOURNAL, naming the record, file and range). A complete journal
 * is rolled back only if every range still holds the bytes the realignment wrote, unless
 * force (NLSR_E_MISMATCH otherwise). The journal file is kept (marked rolling back): the
 * caller removes it with nlsr_durable_unlink once its own records are updated. */
int nlsr_journal_rollback(nlsr_ctx *ctx, const char *dir, int force, nlsr_journal_info *info);

/* For jobs that read a fine-tuned checkpoint into another folder (--out): refuses a folder whose
 * in-place realignment was interrupted (its bytes are half patched) with NLSR_E_JOURNAL and a
 * message saying to roll it back. A file path, or a folder without a journal, passes. */
int nlsr_journal_check_input(nlsr_ctx *ctx, const char *path);

#endif
