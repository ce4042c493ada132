#!/usr/bin/env bash
# kafka-storage.sh: as the distribution's, kafka.tools.StorageTool.
exec "$(dirname "$0")/kafka-run-class.sh" kafka.tools.StorageTool "$@"
