#!/bin/sh
# help2man-wrap.sh: runs $TWINHUB_MAN_BIN with the given arguments for help2man, with the
# headings of its --help text as help2man expects them: "usage:" becomes "Usage:" (the
# SYNOPSIS), lower-case headings are capitalised ("options:" -> "Options:"), and an "Options:"
# heading goes before the first option of a text that has none. cmake/Packaging.cmake copies
# it once per program, under the program's name (help2man names the page after what it runs).
set -e
"$TWINHUB_MAN_BIN" "$@" | awk '
    /^usage:/ { sub(/^usage:/, "Usage:") }
    /^[a-z][a-z ]*:$/ { $0 = toupper(substr($0, 1, 1)) substr($0, 2) }
    /^Options:$/ { opts = 1 }
    !opts && /^ +-/ { print "Options:"; opts = 1 }
    { print }'
