/* SPDX-License-Identifier: Apache-2.0 */
/* The report's audit record: who ran what, where, when, on which bytes.
 *
 * A job that writes a report (--report FILE or --json) begins an audit on its context, names
 * its inputs (checkpoints and patch files, as given) and outputs, and the report's JSON gets an
 * "audit" object: tool and version, command line, UTC start and end, host, each input and
 * output with its path as given and resolved (realpath), and an XXH64 (seed 0) of each weight
 * file (every .safetensors shard, patch files).
 *
 * Inputs are fingerprinted from the bytes the job reads anyway, as the read streams deliver
 * them (nlsr_audit_tap; the patch file's reader calls it through ctx->read_tap), never with a
 * read pass of their own: a file read whole and in order gets "xxh64" (the file's hash, what
 * `xxhsum -H64` prints); a file read only in part (the single pass reads only target tensors
 * of base and aligned, in module order; in place reads only the target tensors) gets
 * "xxh64_of_bytes_read", the hash of the ranges listed in "ranges_read" ([offset, length],
 * concatenated in that order, each byte once). Headers are hashed at registration (they are
 * small and already in the page cache), and a tail of at most 64 MiB left unread by a job that
 * read everything before it (the patch file's header and trailer) is read at the end.
 * Outputs are written whole and are read back once after the job (the cost is reported as
 * "output_hash_seconds"); in-place outputs are not hashed again (the state file's "result"
 * fingerprints the bytes written).
 *
 * Nested jobs (run's prepare + apply, in-place runs) share the outer job's audit: only the
 * outermost nlsr_audit_begin starts one, and only it registers inputs and outputs. */
#ifndef NLSR_PLAN_AUDIT_H
#define NLSR_PLAN_AUDIT_H

#include <stddef.h>
#include <stdint.h>

#include "../common/ctx.h"
#include "../io/checkpoint.h"

struct cJSON;

/* Starts the audit when p asks for a report and none is running; returns a token for
 * nlsr_audit_end (1 if this call started it). */
int nlsr_audit_begin(nlsr_ctx *ctx, const nlsr_realign_params *p);
void nlsr_audit_end(nlsr_ctx *ctx, int token);
/* Inputs: a checkpoint (every shard), or a single file such as a patch file. Only the
 * outermost job's calls count (a nested job's are ignored), and each (role, path) once. */
void nlsr_audit_input_ckpt(nlsr_ctx *ctx, const char *role, const char *given,
                           const nlsr_ckpt *ck);
void nlsr_audit_input_file(nlsr_ctx *ctx, const char *role, const char *given);
/* An output folder or file; its weight files are hashed when the report is built (after the
 * job committed them). in_place: the input folder itself, not hashed again. */
void nlsr_audit_output(nlsr_ctx *ctx, const char *role, const char *given, int in_place);
/* Where an output registered as `given` is while the job builds it (its temporary folder or
 * file): the report is written before the commit, so the output is hashed there; the report
 * names it by its final path. */
void nlsr_audit_output_at(nlsr_ctx *ctx, const char *given, const char *where);
/* Bytes [off, off + len) of the file open as fd, as just read. */
void nlsr_audit_tap(nlsr_ctx *ctx, int fd, uint64_t off, const void *data, size_t len);
/* The "audit" object (NULL without an audit or out of memory). */
struct cJSON *nlsr_audit_json(nlsr_ctx *ctx);

#endif
