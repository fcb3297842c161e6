/* SPDX-License-Identifier: Apache-2.0 */
/* Hugging Face hub cache layouts (huggingface_hub's `~/.cache/huggingface/hub`):
 *
 *   models--org--name/                 the repository folder
 *     blobs/<sha256 or git sha1>       file contents, shared by every revision
 *     refs/main                        a text file holding a commit hash (revision
 *                                      refs/pr/1 in refs/refs/pr/1, and the like)
 *     snapshots/<commit>/config.json   relative symbolic links into ../../blobs/
 *
 * A snapshot folder is read as a plain checkpoint folder, through its links. A repository
 * folder is resolved to one of its snapshots: refs/<revision> names the commit (revision
 * "main" unless one is given), or the revision names the snapshot folder itself (a commit hash,
 * or a unique prefix of at least 7 hex digits of one). Resolution only reads: nothing is ever
 * written into the cache. */
#ifndef NLSR_IO_HUB_H
#define NLSR_IO_HUB_H

#include "../common/err.h"

typedef enum nlsr_hub_kind {
    NLSR_HUB_NONE,     /* a plain file or folder */
    NLSR_HUB_SNAPSHOT, /* .../snapshots/<commit>/ of a repository folder */
    NLSR_HUB_REPO      /* models--org--name/ itself */
} nlsr_hub_kind;

#define NLSR_HUB_MAX_REVISION 255

/* 1 if `rev` may name a revision: a commit hash or a ref name under refs/ (refs/pr/1 has inner
 * slashes), without a leading, trailing or doubled '/', a '.' or '..' part, a backslash or a
 * control character; at most NLSR_HUB_MAX_REVISION bytes. */
int nlsr_hub_revision_ok(const char *rev);

/* What `path` is. For a repository folder, *resolved receives the snapshot folder `revision`
 * (NULL: "main") names (malloc'd; "PATH/snapshots/<commit>"). For a snapshot folder with a
 * revision given that its repository also has, the revision must name that same snapshot (else
 * one line saying to give the repository folder). Otherwise *resolved is NULL and nothing is
 * checked. Errors are one line
 * naming `path` as given. */
int nlsr_hub_resolve(const char *path, const char *revision, nlsr_hub_kind *kind,
                     char **resolved, nlsr_err *e);

#endif
