/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Path templates (DESIGN.md D2). A template is '/'-separated segments of literal text and fields:
 *   {albumartist} {artist} {album} {title} {year} {genre} {composer} {ext} {track} {disc}
 *   with an optional zero-pad width: {track:02}.
 * {albumartist} falls back to the artist; a compilation renders "Various Artists". {disc} renders
 * "N-" only when the album has more than one disc, else nothing. Missing tags: "Unknown Artist",
 * "Unknown Album", the file's own stem for the title, nothing for year/genre/composer; an empty
 * "()" or "[]" left behind disappears with the space before it ("Album ()" -> "Album").
 * Every rendered segment: '/', NUL and control characters become '_', surrounding white space is
 * trimmed, "." and ".." and "" become "_". Unicode is kept; invalid UTF-8 bytes become '_'. */
#include <stdbool.h>

#include "catalog.h"

typedef struct Template Template;

/* -EINVAL with a reason ("unknown field {foo} at column 3") on a bad template. */
int template_parse(const char *spec, Template **ret, char **ret_reason);
void template_free(Template *t);
/* The text the template was parsed from. */
const char *template_spec(const Template *t);

typedef struct TemplateInput {
        const TrackTags *tags;
        const char *stem;       /* origin file name without extension, title fallback */
        const char *ext;        /* lower-case, without dot */
        bool multi_disc;        /* the album has more than one disc */
        bool compilation;       /* the album is a compilation (any track flagged) */
} TemplateInput;

/* Renders a relative path "a/b/c.ext" into a newly allocated string. */
int template_render(const Template *t, const TemplateInput *in, char **ret_path);

/* The album-artist value as rendered by the template rules (for grouping albums). Newly allocated. */
int template_album_artist(const TrackTags *tags, bool compilation, char **ret);

/* Segment sanitising as above; exposed for tests and for other namespaces (.search). */
char *template_sanitize_segment(const char *s);
