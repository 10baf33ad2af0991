/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Interim: root only. The asynchronous polkit query replaces this in the management-API work. */
#include <errno.h>
#include <stdlib.h>

#include "log.h"
#include "macro.h"
#include "polkit.h"

struct PolkitRegistry {
        int unused;
};

int polkit_registry_new(PolkitRegistry **ret) {
        PolkitRegistry *r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        *ret = r;
        return 0;
}

void polkit_registry_free(PolkitRegistry *r) {
        free(r);
}

int polkit_verify(PolkitRegistry *r, sd_bus_message *m, const char *action, sd_bus_error *error) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t euid;
        int q;

        q = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID | SD_BUS_CREDS_AUGMENT, &creds);
        if (q >= 0)
                q = sd_bus_creds_get_euid(creds, &euid);
        if (q < 0) {
                log_debug_errno(q, "Cannot tell who called %s, refusing: %m", sd_bus_message_get_member(m));
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Cannot determine the caller's identity, access to %s denied.", action);
        }
        if (euid != 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Only root may do this (%s); uid %u is not allowed.", action, (unsigned) euid);
        return 1;
}
