#!/bin/sh
# The container's entrypoint: `qwenrt serve` on $QWENRT_MODEL (a mounted GGUF file or model
# directory), or on the default model, fetched into $QWENRT_HOME first when it is not there
# yet. Arguments go to `qwenrt serve`. exec, so that SIGTERM reaches qwenrt (which drains).
set -eu
if [ -z "${QWENRT_MODEL:-}" ]; then
    QWENRT_MODEL=$(qwenrt fetch)
fi
exec qwenrt serve --model "$QWENRT_MODEL" "$@"
