#!/bin/sh
# No package starts a service in a container (as in the official image).
exit 101
